"""The report: ``report.md``, a self-contained ``report.html`` (figures
embedded as data URIs) and the figures as PNG files, from ``summary.json``.

The document is built once as a list of blocks (heading, paragraph, table,
figure) and rendered to Markdown or HTML, so both always say the same. The
dataset's ``reports/<dataset>/index.*`` lists its sweeps' reports, latest
first.
"""
from __future__ import annotations

import base64
import functools
import hashlib
import html
import io
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .analysis import load_summary, read_summary, report_prefix, sweeps_of
from .findings import LEAK_ALPHA
from .design import ALPHA
from .representations import MEANING
from .store import Store, open_store

LEAK_NOTE = f"Holm-corrected over the archs at family-wise α = {LEAK_ALPHA:g}"
CI = f"{1 - ALPHA:.0%} CI"  # the interval that matches the decision level


@dataclass
class Block:
    kind: str  # h1, h2, h3, p, warn, table, figure
    text: str = ""
    rows: list | None = None  # table: header first
    png: bytes = b""


@functools.cache
def _pyplot():
    """matplotlib's pyplot on the Agg backend, imported with the first figure
    (a report that is already current draws none, and pays nothing for it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot

    return matplotlib.pyplot


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    _pyplot().close(fig)
    return buf.getvalue()


def _problem_bounds(labels: np.ndarray) -> list[int]:
    return [i for i in range(1, len(labels)) if labels[i] != labels[i - 1]]


def fig_heatmap(arch: str, sim: np.ndarray, labels: np.ndarray) -> bytes:
    """Similarity of a sample of runs (``labels``: their problems, in order)."""
    fig, ax = _pyplot().subplots(figsize=(5, 4.3))
    im = ax.imshow(sim, cmap="viridis", vmin=min(0.0, float(sim.min())), vmax=1)
    for b in _problem_bounds(labels):
        ax.axhline(b - 0.5, color="w", lw=0.5)
        ax.axvline(b - 0.5, color="w", lw=0.5)
    starts = [0, *_problem_bounds(labels)]
    centers = [(a + b - 1) / 2 for a, b in zip(starts, [*starts[1:], len(labels)])]
    size = 7 if len(starts) <= 20 else 5
    ax.set_xticks(centers, [str(labels[a]) for a in starts], rotation=90, fontsize=size)
    ax.set_yticks(centers, [str(labels[a]) for a in starts], fontsize=size)
    ax.set_title(f"{arch}: chain-feature cosine similarity (ordered by problem)", fontsize=9)
    ax.set_xlabel(f"problem ({len(labels)} runs shown, grouped by problem)")
    ax.set_ylabel("problem")
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _png(fig)


def fig_within_between(arch: str, sims: dict[str, np.ndarray], labels: np.ndarray) -> bytes:
    same = labels[:, None] == labels[None, :]
    iu = np.triu_indices(len(labels), 1)
    fig, axes = _pyplot().subplots(1, len(sims), figsize=(4.2 * len(sims), 3))
    for ax, (name, sim) in zip(np.atleast_1d(axes), sims.items()):
        vals, mask = sim[iu], same[iu]
        bins = np.linspace(vals.min(), vals.max() + 1e-9, 40)
        ax.hist(vals[~mask], bins, alpha=0.6, density=True, label="between problems")
        ax.hist(vals[mask], bins, alpha=0.6, density=True, label="within a problem")
        ax.set_title(f"{arch}: {name} similarity", fontsize=9)
        ax.set_xlabel(f"cosine similarity of two runs ({len(labels)} runs sampled)")
        ax.set_ylabel("density")
        ax.legend(fontsize=7)
    return _png(fig)


def fig_projection(arch: str, proj: np.ndarray, labels: np.ndarray) -> bytes:
    fig, ax = _pyplot().subplots(figsize=(4.6, 4))
    for i, p in enumerate(np.unique(labels)):
        m = labels == p
        ax.scatter(proj[m, 0], proj[m, 1], s=14, color=_pyplot().cm.tab20(i % 20), label=str(p))
    ax.set_title(f"{arch}: chain features, first two principal components", fontsize=9)
    ax.set_xlabel("principal component 1")
    ax.set_ylabel("principal component 2")
    ax.legend(fontsize=6, ncol=2, title="problem", title_fontsize=7)
    return _png(fig)


def fig_htt(arch: str, entry: dict) -> bytes:
    names = list(entry["htt"])
    res = [entry["htt"][n] for n in names]
    fig, ax = _pyplot().subplots(figsize=(6, 0.32 * len(names) + 1.2))
    y = np.arange(len(names))
    acc = np.array([r["accuracy"] for r in res])
    err = np.array([[r["accuracy"] - r["ci_low"] for r in res], [r["ci_high"] - r["accuracy"] for r in res]])
    colors = ["tab:green" if r["p_permutation"] <= ALPHA and r["p_binomial"] <= ALPHA else "tab:gray" for r in res]
    ax.barh(y, acc, xerr=err, color=colors, capsize=2)
    ax.axvline(res[0]["chance"], color="tab:red", ls="--", label="chance")
    ax.set_yticks(y, names, fontsize=8)
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.set_xlabel(f"held-out problem accuracy ({CI}); green: significant at α={ALPHA:g}")
    ax.set_title(f"{arch}: hypothesis-training-testing per representation and depth", fontsize=9)
    ax.legend(fontsize=7)
    return _png(fig)


def fig_over_time(arch: str, over: dict) -> bytes:
    """Chain HTT accuracy (99% CI) per checkpoint epoch, with chance and the
    epoch-0 (untrained) level marked; filled: significant after Holm."""
    rows = over["rows"]
    ep = np.array([r["epoch"] for r in rows])
    acc = np.array([r["accuracy"] for r in rows])
    err = np.array([[r["accuracy"] - r["ci_low"] for r in rows], [r["ci_high"] - r["accuracy"] for r in rows]])
    sig = np.array([r["significant"] for r in rows])
    fig, ax = _pyplot().subplots(figsize=(5.5, 3.3))
    ax.errorbar(ep, acc, yerr=err, color="tab:blue", capsize=3, lw=1, zorder=1)
    ax.scatter(ep[sig], acc[sig], color="tab:green", zorder=2, label="significant (Holm over epochs)")
    ax.scatter(ep[~sig], acc[~sig], facecolor="w", edgecolor="tab:gray", zorder=2, label="not significant")
    ax.axhline(rows[0]["chance"], color="tab:red", ls="--", lw=1, label="chance")
    if rows[0]["epoch"] == 0:
        ax.axhline(rows[0]["accuracy"], color="tab:gray", ls=":", lw=1, label="untrained (epoch 0)")
    return _accuracy_plot(fig, ax, ep, "checkpoint epoch", f"held-out problem accuracy ({CI})",
                          f"{arch}: chain HTT over training time")


def _accuracy_plot(fig, ax, ticks, xlabel: str, ylabel: str, title: str) -> bytes:
    """An accuracy-against-``ticks`` figure's axes, title and legend; its PNG."""
    ax.set_ylim(0, 1.02)
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    return _png(fig)


def over_time_blocks(arch: str, over: dict) -> list[Block]:
    """The arch's per-epoch table, its first significant epoch and figure."""
    first = over["first_significant"]
    said = (f"first significant epoch: **{first}**" if first is not None else
            "no epoch is significant")
    rows = [["epoch", "HTT acc.", CI, "chance", "p_binomial", "p_perm", "significant (Holm)", "within",
             "between", "p (similarity)"]]
    rows += [[r["epoch"], r["accuracy"], f"{r['ci_low']:.3f}–{r['ci_high']:.3f}", r["chance"], r["p_binomial"],
              r["p_permutation"], "yes" if r["significant"] else "no", r["within"], r["between"], r["p_similarity"]]
             for r in over["rows"]]
    return [Block("h3", "Over training time (chain features per checkpoint epoch)"),
            Block("p", f"{arch}: {said} ({over['test']}; B = {over['n_permutations']} label permutations per "
                       f"epoch)."),
            Block("table", rows=rows), Block("figure", f"{arch}-over-time", png=fig_over_time(arch, over))]


def function_blocks(arch: str, e: dict) -> list[Block]:
    """Weights (chain) and function (activations on the probe set) side by
    side: the same HTT, within/between similarity, and the paired verdict."""
    f = e["function"]
    c, a, pair = e["htt"]["chain"], e["htt"]["activation"], f["paired"]
    rows = [["", "weights (chain)", "function (activation)"],
            ["HTT accuracy", c["accuracy"], a["accuracy"]],
            [CI, f"{c['ci_low']:.3f}–{c['ci_high']:.3f}", f"{a['ci_low']:.3f}–{a['ci_high']:.3f}"],
            ["p_perm", c["p_permutation"], a["p_permutation"]],
            ["held-out runs right only here", pair["only_a"], pair["only_b"]]]
    sims = [["similarity", "within", "between", "difference", "Cohen's d", "p (label permutation)"]]
    for name, w in (("chain cosine (weights)", e["similarity"]),
                    ("activation cosine", e["similarity_baselines"]["activation"]),
                    ("debiased linear CKA", f["cka"]), ("Procrustes distance (angular; lower = closer)",
                                                        f["procrustes"])):
        sims.append([name, w["within_mean"], w["between_mean"], w["difference"], w["effect_size"], w["p_value"]])
    verdict = {"weights": "the weights recover the problem better than the function",
               "function": "the function recovers the problem better than the weights",
               "neither": "neither recovers the problem significantly better"}[f["stronger"]]
    return [Block("h3", "Weights beside function (the same runs, the same test)"),
            Block("p", f"**{arch}: {verdict}** (McNemar's exact test on the {pair['n_test']} held-out runs: "
                       f"p = {_fmt(pair['p_mcnemar'])} at α = {ALPHA:g}). Function: activations of the "
                       f"scale-normalized networks on {f['probes']} probe inputs from the test split (the same for "
                       f"every run); CKA and Procrustes on a stratified sample: "
                       f"{f.get('pairwise_sample', str(f['n_runs_pairwise']) + ' runs')}."),
            Block("table", rows=rows), Block("table", rows=sims)]


EFFICIENCY_COLORS = {"chain": "tab:blue", "activation": "tab:orange", "raw": "tab:gray", "untrained": "tab:red"}


def fig_efficiency(arch: str, eff: dict) -> bytes:
    """Held-out HTT accuracy (mean over splits, 99% interval) against the fitting runs per problem, one line
    per representation; filled: significant after Holm over the sizes."""
    fig, ax = _pyplot().subplots(figsize=(5.5, 3.3))
    for name, rows in eff["curves"].items():
        size = np.array([r["size"] for r in rows])
        mean = np.array([r["mean"] for r in rows])
        color = EFFICIENCY_COLORS.get(name, "tab:purple")
        ax.plot(size, mean, color=color, lw=1, label=name)
        ax.fill_between(size, [r["ci_low"] for r in rows], [r["ci_high"] for r in rows], color=color, alpha=0.15)
        sig = np.array([r["significant"] for r in rows])
        ax.scatter(size[sig], mean[sig], color=color, s=14, zorder=2)
        ax.scatter(size[~sig], mean[~sig], facecolor="w", edgecolor=color, s=14, zorder=2)
    ax.axhline(eff["chance"], color="k", ls="--", lw=0.8, label="chance")
    ax.set_xscale("log")
    return _accuracy_plot(fig, ax, eff["sizes"], "training runs per problem", "held-out problem accuracy",
                          f"{arch}: sample efficiency ({eff['repeats']} splits per size; filled: significant)")


def efficiency_blocks(arch: str, eff: dict) -> list[Block]:
    """The arch's sample-efficiency table and figure."""
    if not eff.get("sizes"):
        return [Block("h3", "Sample efficiency"), Block("p", f"{arch}: {eff.get('note', 'not computed')}.")]
    names = list(eff["curves"])
    rows = [["runs per problem", *(f"{n} (mean, 99% int.)" for n in names), *(["McNemar chain vs activation"]
                                                                            if "paired" in eff else [])]]
    for i, size in enumerate(eff["sizes"]):
        cells = [f"{r['mean']:.3f} ({r['ci_low']:.3f}–{r['ci_high']:.3f})" + (" *" if r["significant"] else "")
                 for r in (eff["curves"][n][i] for n in names)]
        pair = eff["paired"][i] if "paired" in eff else None
        rows.append([size, *cells, *([f"{pair['only_chain']}:{pair['only_activation']}, p = {_fmt(pair['p_mcnemar'])}"]
                                      if pair else [])])
    needed = ", ".join(f"{n}: {eff['runs_needed'][n] if eff['runs_needed'][n] is not None else 'none'}" for n in names)
    fewer = {"weights": "the weights (chain) need fewer runs than the function (activation)",
             "function": "the function (activation) needs fewer runs than the weights (chain)",
             "same": "weights and function need as many runs", "neither": "neither identifies the problem"}
    said = f" — {fewer[eff['fewer']]}" if "fewer" in eff else ""
    return [Block("h3", "Sample efficiency: training runs per problem needed"),
            Block("p", f"{arch}: fewest runs per problem at which each representation identifies the problem "
                       f"(*: significant): {needed}{said}. {eff['n_test_per_problem']} held-out runs per problem; "
                       f"{eff['test']}; B = {eff['n_permutations']}."),
            Block("table", rows=rows), Block("figure", f"{arch}-efficiency", png=fig_efficiency(arch, eff))]


def efficiency_table(archs: dict) -> list[Block]:
    """arch × representation → training runs per problem needed (all archs with a curve)."""
    names = [n for n in ("chain", "activation", "raw", "untrained")
             if any(n in e.get("efficiency", {}).get("curves", {}) for e in archs.values())]
    rows = [["arch", *names, "fewer"]]
    for arch, e in archs.items():
        eff = e.get("efficiency", {})
        if eff.get("sizes"):
            rows.append([arch, *(("none" if eff["runs_needed"].get(n) is None else eff["runs_needed"][n])
                                 if n in eff["curves"] else "—" for n in names), eff.get("fewer", "—")])
    if len(rows) == 1:
        return []
    return [Block("h2", "Training runs per problem needed (sample efficiency)"), Block("table", rows=rows)]


def _imported(e: dict) -> bool:
    """The arch's runs were trained elsewhere (``weightsim import``): no training epochs."""
    return e.get("training", {}).get("engine") == "imported"


def _first_significant(e: dict) -> str:
    if _imported(e):
        return "— (imported)"
    over = e.get("over_time")
    if not over or len(over["rows"]) < 2:
        return "—"
    return "none" if over["first_significant"] is None else str(over["first_significant"])


def fig_accuracy(accs: dict[str, np.ndarray]) -> bytes:
    fig, ax = _pyplot().subplots(figsize=(5, 3))
    ax.boxplot(list(accs.values()))
    ax.set_xticks(range(1, len(accs) + 1), list(accs))
    ax.set_ylabel("test accuracy of the run")
    ax.set_title("test accuracy of the trained networks", fontsize=9)
    return _png(fig)


def _fmt(x) -> str:
    if isinstance(x, float):
        return f"{x:.3g}" if (abs(x) < 1e-3 and x != 0) else f"{x:.3f}"
    return str(x)


TRAINING_FIELDS = (("epochs", "epochs"), ("lr", "learning rate"), ("momentum", "momentum"),
                   ("batch_size", "batch size"), ("weight_decay", "weight decay"), ("grad_clip", "gradient clip"),
                   ("checkpoints", "checkpoints"), ("precision", "precision"), ("engine", "engine"),
                   ("device", "device"))


def how_to_read(summary: dict) -> list[Block]:
    """What the report's terms mean, the test and its decision rule, the
    p-value floor, and the training configuration of every arch."""
    entries = summary["archs"]
    b = next((e.get("n_permutations") or e["htt"]["chain"].get("n_permutations") for e in entries.values()), None)
    alpha = summary["alpha"]
    floor = (f"With B = {b} permutations the smallest possible permutation p-value is 1/(B+1) = {1 / (b + 1):.3g}: "
             f"a p_perm at that floor means no permuted labelling scored as high as the real one, not that p is "
             f"exactly that value." if b else "")
    blocks = [
        Block("h2", "How to read this report"),
        Block("p", f"**The test.** H0: a network's problem cannot be recovered from its weights. "
                   f"Hypothesis-training-testing splits every problem's runs into fitting runs and held-out runs, "
                   f"fits a classifier ({summary['htt_model']}) on a representation of the fitting runs and predicts "
                   f"the problem of each held-out run. H0 is rejected for an arch when the held-out accuracy of the "
                   f"chain representation beats chance (the majority problem's share of the held-out runs) in both "
                   f"the one-sided binomial test and the label-permutation test at p ≤ α = {alpha:g}. "
                   f"The leak check flags an arch whose untrained control is classified above chance ({LEAK_NOTE})."),
        Block("p", f"**p-values.** p_binomial: the chance of at least this many correct held-out predictions by "
                   f"guessing at the chance rate. p_perm: the share of label permutations of the fitting runs that "
                   f"score at least as well, counting the real labelling. {floor}"),
        Block("p", "**Similarity.** Within vs between: the mean cosine similarity of two runs of the same problem "
                   "against two runs of different problems, with a label-permutation p-value."),
        Block("table", rows=[["representation", "what it is"]] + [[k, v] for k, v in MEANING.items()]),
    ]
    rows = [["arch", *(label for _, label in TRAINING_FIELDS)]]
    rows += [[arch, *("—" if _imported(e) and k != "engine" else _setting(e.get("training", {}).get(k))
                      for k, _ in TRAINING_FIELDS)] for arch, e in entries.items()]  # imported: engine says so
    return blocks + [Block("h3", "Training configuration of the runs"), Block("table", rows=transposed(rows))]


def transposed(rows: list[list]) -> list[list]:
    """A table with one column per arch (its first column) and one row per
    field: a few archs stay narrow however many fields there are."""
    return [list(r) for r in zip(*rows)]


def problems_note(summary: dict) -> list[Block]:
    """What the problems are: class pairs, k-class groups or one-vs-rest
    (each class against all others), from the problem names."""
    names = sorted({p for e in summary["archs"].values() for p in e.get("problems", [])})
    if not names:
        return []
    if all(n.endswith("vrest") for n in names):
        kind = ("one-vs-rest problems: each class (label 0) against all other classes (label 1), the rest "
                "sampled to as many examples as the class")
    else:
        sizes = sorted({n.count("v") + 1 for n in names})
        kind = "class pairs" if sizes == [2] else f"groups of {'/'.join(map(str, sizes))} classes"
    shown = ", ".join(names[:12]) + (", …" if len(names) > 12 else "")
    return [Block("p", f"**Problems.** {len(names)} {kind}: {shown}.")]


def _setting(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, list):
        return ",".join(map(str, value)) or "—"
    return f"{value:g}" if isinstance(value, float) else str(value)


def build_blocks(summary: dict, arrays: dict) -> list[Block]:
    """The whole report as blocks."""
    ds = summary["dataset"]
    blocks = [Block("h1", f"weightsim report: {ds}"),
              Block("p", f"Sweep {summary['sweep']}, dataset fingerprint {summary['fingerprint']}, analysed "
                         f"{summary['created']} by weightsim {summary['library_version']}; decisions at α = "
                         f"{summary['alpha']}.")]
    blocks += how_to_read(summary)
    blocks += problems_note(summary)
    rows = [["arch", "runs", "problems × seeds", "mean test acc.", "chain HTT acc.", "chance", "p_perm",
             "untrained acc.", "activation HTT acc.", "stronger", "first sig. epoch", "decision"]]
    for arch, e in summary["archs"].items():
        c, u = e["htt"]["chain"], e["htt"].get("untrained")
        rows.append([arch, e["n_runs"], f"{e['n_problems']} × {e['n_seeds']}", e["mean_test_accuracy"],
                     c["accuracy"], c["chance"], c["p_permutation"], u["accuracy"] if u else "none (no epoch 0)",
                     e["htt"]["activation"]["accuracy"] if "function" in e else "—",
                     e["function"]["stronger"] if "function" in e else "—", _first_significant(e),
                     e["decision"].split(":")[0] + (" (LEAK)" if e["leak"] else "")])
    blocks += [Block("h2", "Decisions"), Block("table", rows=transposed(rows))]
    blocks += efficiency_table(summary["archs"])
    for arch, e in summary["archs"].items():
        blocks += [Block("h2", f"{arch}"), Block("p", f"**{arch}**: {e['decision']}; Cohen's h = "
                                                    f"{e['effect_size']['chain']:.2f}.")]
        for key in ("warning", "warning_below_chance", "warning_permutations", "note_control", "note_function",
                    "note_diverged", "note_exploratory"):
            if e.get(key):
                blocks.append(Block("warn", e[key]))
        if e.get("shared_inits", {}).get("note"):
            blocks.append(Block("warn", e["shared_inits"]["note"]))
        if e.get("bad_runs"):
            blocks.append(Block("warn", f"{len(e['bad_runs'])} bad run(s) left out: {', '.join(e['bad_runs'])}"))
        rows = [["representation", "accuracy", CI, "chance", "p_binomial", "p_permutation", "Cohen's h"]]
        for name, r in e["htt"].items():
            rows.append([name, r["accuracy"], f"{r['ci_low']:.3f}–{r['ci_high']:.3f}", r["chance"], r["p_binomial"],
                         r["p_permutation"], e["effect_size"][name]])
        blocks += [Block("h3", "Hypothesis-training-testing: representations and controls"), Block("table", rows=rows)]
        rows = [["representation", "within", "between", "difference", "Cohen's d", "p (label permutation)"]]
        for name, w in {"chain": e["similarity"], **e["similarity_baselines"]}.items():
            rows.append([name, w["within_mean"], w["between_mean"], w["difference"], w["effect_size"], w["p_value"]])
        blocks += [Block("h3", "Within- vs between-problem similarity (cosine)"), Block("table", rows=rows)]
        if "retrieval" in e:
            r = e["retrieval"]
            rows = [["metric", "value", "chance"]] + [[f"CMC rank-{k}", v, r["chance_cmc"][k]] for k, v in r["cmc"].items()]
            rows.append(["mAP", r["mean_ap"], r["chance_map"]])
            blocks += [Block("h3", f"Retrieval on unseen problems ({len(r['test_problems'])} problems, "
                                   f"{r['n_queries']} queries, {r['n_gallery']} gallery)"), Block("table", rows=rows)]
        if "function" in e:
            blocks += function_blocks(arch, e)
        if e.get("over_time") and len(e["over_time"]["rows"]) >= 2 and not _imported(e):
            blocks += over_time_blocks(arch, e["over_time"])
        if "efficiency" in e:
            blocks += efficiency_blocks(arch, e["efficiency"])
        a = arrays[arch]
        labels = a["labels"][a["sample"]]
        blocks += [Block("figure", f"{arch}-htt", png=fig_htt(arch, e)),
                   Block("figure", f"{arch}-similarity", png=fig_heatmap(arch, a["similarity"], labels)),
                   Block("figure", f"{arch}-within-between",
                         png=fig_within_between(arch, {"chain": a["similarity"], "raw": a["similarity_raw"]}, labels)),
                   Block("figure", f"{arch}-projection", png=fig_projection(arch, a["projection"], labels))]
    if summary.get("cross"):
        rows = [["fit on", "evaluated on", "accuracy", "chance", "p_binomial"]]
        rows += [[c["fit"], c["evaluate"], c["accuracy"], c["chance"], c["p_binomial"]] for c in summary["cross"]]
        blocks += [Block("h2", "Cross tests (representation fit on one solution set, tested on another)"),
                   Block("table", rows=rows)]
    blocks += [Block("h2", "Trained networks"),
               Block("figure", "test-accuracy", png=fig_accuracy({a: arrays[a]["test_accuracy"] for a in arrays}))]
    return blocks


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def to_markdown(blocks: list[Block], embed: bool = False) -> str:
    """Markdown; figures as ``<name>.png`` links, or embedded data URIs."""
    out = []
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            out.append("#" * int(b.kind[1]) + " " + b.text)
        elif b.kind == "p":
            out.append(b.text)
        elif b.kind == "warn":
            out.append(f"> **Warning:** {b.text}")
        elif b.kind == "table":
            head, *body = b.rows
            out.append("\n".join(["| " + " | ".join(map(str, head)) + " |", "|" + "---|" * len(head)] +
                                 ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in body]))
        elif b.kind == "figure":
            out.append(f"![{b.text}]({_data_uri(b.png) if embed else b.text + '.png'})")
    return "\n\n".join(out) + "\n"


_CSS = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;padding:3px 8px}"
        "th{background:#f3f3f3}.warn{background:#fee;border-left:4px solid #c00;padding:.5em 1em}"
        "img{width:100%;height:auto;display:block;margin:1em 0}")


def to_html(blocks: list[Block]) -> str:
    """A self-contained HTML page (figures embedded)."""
    def inline(t: str) -> str:
        parts = html.escape(t).split("**")
        return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))

    body = []
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            body.append(f"<{b.kind}>{html.escape(b.text)}</{b.kind}>")
        elif b.kind == "p":
            body.append(f"<p>{inline(b.text)}</p>")
        elif b.kind == "warn":
            body.append(f'<p class="warn"><b>Warning:</b> {html.escape(b.text)}</p>')
        elif b.kind == "table":
            head, *rows = b.rows
            body.append("<table><tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in head) + "</tr>" +
                        "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in r) + "</tr>"
                                for r in rows) + "</table>")
        elif b.kind == "figure":
            body.append(f'<img alt="{html.escape(b.text)}" src="{_data_uri(b.png)}">')
    title = html.escape(blocks[0].text if blocks else "weightsim report")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title><style>{_CSS}</style>"
            f"</head><body>{''.join(body)}</body></html>")


def embed_figures(md: str, read: Callable[[str], bytes]) -> str:
    """``md`` with every ``![name](name.png)`` figure link replaced by the
    figure itself (``read(file name)`` gives its PNG bytes)."""
    return re.sub(r"!\[([^\]]*)\]\(([^)/]+\.png)\)", lambda m: f"![{m.group(1)}]({_data_uri(read(m.group(2)))})", md)


def render(store: str | Store, dataset: str, sweep: str, archs: Sequence[str] | None = None,
           fingerprint: str | None = None) -> dict[str, str]:
    """Write report.md, report.html and the figures next to summary.json,
    then the dataset's index; return their URIs (``md``, ``html``,
    ``summary``, ``index``). A report already rendered from the same summary
    is kept as it is. A summary of other ``archs`` or another dataset
    version (``fingerprint``) is refused (``read_summary``)."""
    st = open_store(store)
    prefix = report_prefix(dataset, sweep)
    read_summary(st, dataset, sweep, archs, fingerprint)
    try:
        digest = hashlib.sha256(st.get_bytes(f"{prefix}/summary.json")).hexdigest()
        current = st.get_bytes(f"{prefix}/report.md").decode().startswith(f"<!-- summary sha256 {digest} -->")
    except (FileNotFoundError, UnicodeDecodeError):
        digest, current = None, False
    uris = {k: st.key_uri(f"{prefix}/{f}") for k, f in (("md", "report.md"), ("html", "report.html"),
                                                         ("summary", "summary.json"))}
    if not (current and st.exists(f"{prefix}/report.html")):
        summary, arrays = load_summary(st, dataset, sweep)
        digest = hashlib.sha256(st.get_bytes(f"{prefix}/summary.json")).hexdigest()
        blocks = build_blocks(summary, arrays)
        st.put_many((f"{prefix}/{b.text}.png", b.png) for b in blocks if b.kind == "figure")
        st.put_bytes(f"{prefix}/report.html", to_html(blocks).encode())
        st.put_bytes(f"{prefix}/report.md", (f"<!-- summary sha256 {digest} -->\n" + to_markdown(blocks)).encode())
    uris["index"] = write_index(st, dataset)
    return uris


def write_index(store: str | Store, dataset: str) -> str:
    """``reports/<dataset>/index.json``, ``index.md`` and ``index.html``:
    every analysed sweep of the dataset, latest first (rebuilt from the
    summaries themselves, so concurrent analyses never lose an entry)."""
    st = open_store(store)
    entries = sweeps_of(st, dataset)
    rows = [["sweep", "analysed (UTC)", "archs: runs, chain HTT accuracy, decision", "report"]]
    for i, e in enumerate(entries):
        archs = "; ".join(f"{a}: {v['n_runs']} runs, {v['chain_accuracy']:.3f}, {v['decision']}"
                          if isinstance(v["chain_accuracy"], float) else a for a, v in e["archs"].items())
        rows.append([e["sweep"] + (" (latest)" if i == 0 else ""), e["created"], archs,
                     f"{e['sweep']}/report.html"])
    blocks = [Block("h1", f"weightsim reports: {dataset}"),
              Block("p", f"{len(entries)} analysed sweep(s), latest first; each folder holds its own report.")]
    blocks += [Block("table", rows=rows)] if entries else []
    index = {"dataset": dataset, "latest": entries[0]["sweep"] if entries else None, "sweeps": entries}
    st.put_bytes(f"reports/{dataset}/index.md", to_markdown(blocks).encode())
    st.put_bytes(f"reports/{dataset}/index.html", to_html(blocks).encode())
    return st.put_bytes(f"reports/{dataset}/index.json", json.dumps(index, indent=1).encode())
