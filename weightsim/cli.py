"""The ``weightsim`` command line. Bad input: exit code 2 and one line on stderr."""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from .errors import WeightsimError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one clear line, exit 2 (argparse prints usage + message)
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _sweep_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", help="built-in name (digits, mnist1d, synthetic[:opts]) or a path/URI (default digits)")
    p.add_argument("--archs", help="comma-separated arch names, e.g. mlp,cnn,rnn-tanh,gru (default all four)")
    p.add_argument("--problems", type=int, help="number of class-pair problems (default 10)")
    p.add_argument("--seeds", type=int, help="seeds per problem (default 12)")
    p.add_argument("--epochs", type=int, help="training epochs (default 10)")
    p.add_argument("--store", help="store root: a local folder or s3://bucket/prefix (default ./store)")
    p.add_argument("--device", help="auto, cpu or cuda (default auto)")
    p.add_argument("--checkpoints", help="epochs to keep, e.g. 0,10,final (default 0,final)")
    p.add_argument("--lr", type=float, help="learning rate (default: per arch)")
    p.add_argument("--batch-size", dest="batch_size", type=int, help="mini-batch size (default 32)")
    p.add_argument("--permutations", type=int, help="label permutations per test (default 200)")
    p.add_argument("--skip-bad", dest="skip_bad", action="store_true", default=None,
                   help="analyze: leave out unreadable weight tables (listed in the report) instead of failing")
    p.add_argument("--config", help="TOML file with any of these options (the command line wins)")


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="weightsim", description="Weight similarity of neural-network solution sets.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, text in (("run", "the whole pipeline: train, analyze, report"),
                       ("train", "train the solution sets of a sweep into the store"),
                       ("analyze", "similarity, hypothesis-training-testing and controls of the sweep's runs"),
                       ("report", "render report.md / report.html from the analysis")):
        _sweep_options(sub.add_parser(name, help=text))
    p = sub.add_parser("datasets", help="list the datasets weightsim can use")
    p.add_argument("--store", help="also list datasets registered under <store>/datasets/")
    return parser


def _options(args: argparse.Namespace):
    from .config import load_options

    cli = {k: v for k, v in vars(args).items() if k not in ("command", "config")}
    return load_options(cli, args.config)


def _plan(opts):
    from .datasets import load_dataset
    from .sweep import default_config, plan

    dataset = load_dataset(opts.dataset)
    keys = plan(dataset, opts.archs, opts.problems, range(opts.seeds),
                lambda a: default_config(a, epochs=opts.epochs, lr=opts.lr, batch_size=opts.batch_size,
                                         checkpoints=opts.checkpoint_epochs),
                k=opts.classes_per_problem)
    return dataset, keys


def _train(opts) -> None:
    from .store import open_store
    from .sweep import train_missing

    dataset, keys = _plan(opts)
    store = open_store(opts.store)
    device = opts.resolved_device()
    counts = {"trained": 0, "skipped": 0}
    t0 = time.perf_counter()

    def progress(key, uri, trained):
        counts["trained" if trained else "skipped"] += 1
        done = counts["trained"] + counts["skipped"]
        print(f"[{done}/{len(keys)}] {'trained' if trained else 'skipped'} {key.arch} {key.problem.name} "
              f"seed {key.seed}", file=sys.stderr)

    train_missing(store, keys, dataset, device, progress)
    print(f"{len(keys)} runs of {dataset.name} in {store.uri}: {counts['trained']} trained, "
          f"{counts['skipped']} already there ({time.perf_counter() - t0:.1f} s)")


def _analyze(opts) -> None:
    from .analysis import analyze
    from .store import open_store

    dataset, keys = _plan(opts)
    store = open_store(opts.store)
    missing = [k for k in keys if not store.exists(k.key)]
    if missing:
        raise WeightsimError(f"{len(missing)} of {len(keys)} runs are not in {store.uri} "
                             f"(e.g. {missing[0].arch} {missing[0].problem.name} seed {missing[0].seed}): "
                             f"run 'weightsim train' with the same options first")
    by_arch: dict[str, list[str]] = {}
    for k in keys:
        by_arch.setdefault(k.arch, []).append(store.key_uri(k.key))

    def show(arch, entry):
        print(f"{arch:10s} {entry['decision']}" + ("  [LEAK]" if entry["leak"] else ""))

    uri = analyze(store, dataset.name, dataset.fingerprint, by_arch, n_permutations=opts.permutations,
                  skip_bad=opts.skip_bad, on_arch=show)
    print(f"summary: {uri}")


def _report(opts) -> None:
    from .report import render

    uris = render(opts.store, _dataset_name(opts.dataset))
    print(f"report: {uris['html']}\nmarkdown: {uris['md']}")


def _dataset_name(name: str) -> str:
    from .datasets import load_dataset

    return load_dataset(name).name


def cmd_train(args: argparse.Namespace) -> int:
    _train(_options(args))
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    _analyze(_options(args))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    _report(_options(args))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    opts = _options(args)
    _train(opts)
    _analyze(opts)
    _report(opts)
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from .datasets import BUILTINS, FILE_KINDS, load_dataset

    for name in BUILTINS:
        d = load_dataset(name).describe()
        print(f"{name:10s} {d['classes']:3d} classes  shape {'x'.join(map(str, d['shape'])):8s} "
              f"{d['n_train']:6d} train {d['n_test']:6d} test  fingerprint {d['fingerprint']}")
    if args.store:
        from .store import open_store

        st = open_store(args.store)
        for key in st.glob("datasets/*"):
            print(f"{key.split('/', 1)[1]:10s} registered: {st.key_uri(key)}")
    print(f"user data: a path or URI to {', '.join(FILE_KINDS)}")
    return 0


COMMANDS = {"run": cmd_run, "train": cmd_train, "analyze": cmd_analyze, "report": cmd_report,
            "datasets": cmd_datasets}


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except WeightsimError as exc:
        print(f"weightsim: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("weightsim: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
