"""The ``weightsim`` command line: thin front-ends of the flows (on the local
Prefect server of ``flows.server`` unless ``PREFECT_API_URL`` is set). Bad
input: exit code 2 and one line on stderr, checked before any flow starts."""
from __future__ import annotations

import argparse
import collections
import contextlib
import math
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator, Sequence

from typing import TYPE_CHECKING

from weightsim import catalog, design, loader
from weightsim.config import Options, schema
from weightsim.errors import WeightsimError
from weightsim.placement import GPU_SLOTS

from weightsim.store import open_store

from . import progress, server, setup
from .logs import one_line_errors

if TYPE_CHECKING:
    from weightsim.datasets import Dataset
    from weightsim.runs import RunKey


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one clear line, exit 2 (argparse prints usage + message)
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# the options a sweep command does not use: accepted (one set of flags serves every command of a sweep)
# but left out of its help
NOT_USED = {"run": (), "train": ("skip_bad",), "analyze": ("engine", "runner", "seed_chunk", "slot_limit"),
            "report": ("device", "permutations", "skip_bad", "engine", "runner", "seed_chunk", "slot_limit")}


def _sweep_options(parser: argparse.ArgumentParser, command: str) -> None:
    """One flag per option of ``weightsim.config``'s schema (``--batch-size``
    for ``batch_size``), with its help and default; ``--config`` beside them."""
    for name, kind, default, text, _ in schema():
        shown = ",".join(default) if name == "archs" else default
        kwargs = ({"action": "store_true", "default": None} if kind == "bool" else
                  {"type": {"int": int, "float | None": float}.get(kind, str)})
        kwargs["help"] = argparse.SUPPRESS if name in NOT_USED[command] else \
            text + (f" (default {shown})" if shown not in ("", None, False) else "")
        parser.add_argument("--" + name.replace("_", "-"), dest=name, **kwargs)
    parser.add_argument("--config", help="TOML file with any of these options, or a preset name: digits-ovr (the "
                        "command line wins)")


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="weightsim", description="Weight similarity of neural-network solution sets.",
                     allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, text in (("run", "the whole pipeline: train, analyze, report"),
                       ("train", "train the solution sets of a sweep into the store"),
                       ("analyze", "similarity, hypothesis-training-testing and controls of the sweep's runs"),
                       ("report", "render report.md / report.html from the analysis")):
        p = sub.add_parser(name, help=text, allow_abbrev=False)
        _sweep_options(p, name)
        if name == "train":
            p.add_argument("--partial", action="store_true",
                           help="train a design that cannot reject H0 at α on its own (e.g. a part of a zoo whose "
                           "other seeds are trained later under a sweep that holds them all); without it such a "
                           "design is refused, as run and analyze refuse it")
        p.add_argument("--verbose", action="store_true", help="also print every log line (one per trained run, "
                       "…) in the terminal; they are always in the Prefect logs of the dashboard")
    p = sub.add_parser("watch", allow_abbrev=False,
                       help="emit a Prefect event for every new or changed file under <store>/datasets/")
    p.add_argument("--store", required=True, help="the store to watch")
    p.add_argument("--interval", type=float, default=0, help="seconds between scans (default: scan once)")
    p.add_argument("--overrides", default="", help="JSON object of pipeline parameters the events carry over the "
                   "on-new-dataset template, e.g. '{\"seeds\": 4, \"archs\": \"mlp\"}'")
    p = sub.add_parser("sweeps", allow_abbrev=False,
                       help="list the sweeps recorded in the store: runs trained, analysed")
    p.add_argument("--store", help=f"the store (default $WEIGHTSIM_STORE, else ./{loader.DEFAULT_STORE})")
    p = sub.add_parser("setup", allow_abbrev=False,
                       help="prepare the Prefect server at PREFECT_API_URL: work pool, GPU slots, crash detection")
    p.add_argument("--pool", default=setup.POOL, help=f"process work pool to create if missing "
                   f"(default {setup.POOL})")
    p.add_argument("--gpu-limit", default=GPU_SLOTS, help=f"global concurrency limit CUDA trainings take a slot "
                   f"of (default {GPU_SLOTS})")
    p.add_argument("--gpu-slots", type=int, help="its size: trainings at once (default: the GPUs visible here, "
                   "at least 1)")
    p.add_argument("--unresponsive-after", type=float, default=setup.UNRESPONSIVE_AFTER,
                   help=f"seconds without a heartbeat after which a weightsim flow run is marked Crashed "
                   f"(default {setup.UNRESPONSIVE_AFTER})")
    p = sub.add_parser("worker", allow_abbrev=False,
                       help="start one Prefect worker per device of this machine on a work pool (each owns its "
                            "GPU); sweeps reach them with --runner pool:NAME")
    p.add_argument("--pool", required=True, help="the work pool (a process pool, created if missing)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--gpus", help="all, or GPU indices like 0,2: one worker per GPU (default: every GPU "
                       "visible here, else one CPU worker)")
    which.add_argument("--cpus", type=int, help="N workers on the CPU (no GPU), sharing its cores")
    p.add_argument("--name", help="prefix of the workers' names, <prefix>-gpu<i> or <prefix>-cpu<i> "
                   "(default: the host name)")
    p = sub.add_parser("import", allow_abbrev=False,
                       help="import networks trained elsewhere (.safetensors files listed in a CSV manifest) as a "
                            "sweep that analyze and report take like a trained one")
    p.add_argument("--manifest", required=True, help="CSV with columns file (relative to the manifest), problem "
                   "(e.g. 3v5, 4vrest), optionally seed and init (the network's initialization)")
    p.add_argument("--spec", required=True, help="JSON with the fields of ArchSpec (kind, input_shape, widths, "
                   "num_classes, activation, ...)")
    p.add_argument("--dataset", required=True, help="the dataset the networks were trained on: built-in name or "
                   "path/URI")
    p.add_argument("--sweep", required=True, help="name of the sweep to record them as")
    p.add_argument("--store", help=f"the store (default $WEIGHTSIM_STORE, else ./{loader.DEFAULT_STORE})")
    p.add_argument("--names", help="JSON mapping the files' tensor names onto weightsim's parameter names "
                   "(null: leave the tensor out)")
    p = sub.add_parser("server", allow_abbrev=False,
                       help="the local Prefect server and dashboard that commands share without PREFECT_API_URL")
    p.add_argument("action", choices=("status", "start", "stop", "logs"),
                   help="status: is it running, where; start: start it now; stop: stop it; logs: its log's end")
    p.add_argument("--lines", type=int, default=40, help="logs: how many lines (default 40)")
    p = sub.add_parser("datasets", allow_abbrev=False, help="list the datasets weightsim can use")
    p.add_argument("--store", help="also list datasets registered under <store>/datasets/")
    return parser


def _prepare(args: argparse.Namespace) -> tuple[Options, "Dataset", list["RunKey"]]:
    """Validate everything a command needs before Prefect starts: options
    (``_options``), dataset, archs, problems and the device. Bad input →
    WeightsimError. Returns the options and the planned sweep (dataset, run
    keys)."""
    opts, _ = _options(args)
    return (opts, *_plan(opts))


def _plan(opts: Options) -> tuple["Dataset", list["RunKey"]]:
    from weightsim.placement import resolved_device
    from weightsim.sweep import plan_sweep

    dataset, keys = plan_sweep(opts)
    if not opts.runner.startswith("pool:"):  # under pool:NAME the device is the workers'
        resolved_device(opts.device)
    return dataset, keys


def _options(args: argparse.Namespace, recorded: bool = False) -> tuple[Options, dict | None]:
    """A command's options (``loader.with_record``: a recorded sweep brings
    its training options), validated with the cheap checks (store, runner,
    API, design), so errors answer before torch is imported, and the sweep's
    record (None if the store records no sweep of that name)."""
    given = loader.given({k: v for k, v in vars(args).items() if k not in ("command", "config", "verbose", "partial")},
                         args.config)
    opts, record = loader.with_record(given, recorded)
    open_store(opts.store).check()
    _check_scheduler(opts.runner)
    _check_api()
    partial = getattr(args, "partial", False)  # train --partial: only warned
    design.check_analysable(opts.problems, opts.seeds, opts.permutations,
                            design=args.command in ("run", "analyze") or (args.command == "train" and not partial))
    problem = design.design_problem(opts.problems, opts.seeds, opts.permutations) if partial else None
    if problem:
        print(f"weightsim: warning: {problem}; 'weightsim analyze' will refuse this sweep", file=sys.stderr)
    return opts, record


def _check_api() -> None:
    """The Prefect server that ``PREFECT_API_URL`` names must answer before
    anything is recorded or started."""
    url = os.environ.get("PREFECT_API_URL")
    if not url:
        return
    import httpx

    from weightsim.uris import redact

    try:
        httpx.get(url.rstrip("/") + "/health", timeout=10).raise_for_status()
    except (httpx.HTTPError, OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise WeightsimError(f"the Prefect server at PREFECT_API_URL={redact(url)} does not answer ({reason}): "
                             f"start it, or unset PREFECT_API_URL to use an embedded one") from None


def _check_scheduler(runner: str) -> None:
    """A Dask runner needs the dask extra, and a scheduler address must
    answer, before any flow starts; a work pool needs a Prefect server its
    workers share."""
    if runner == "dask" or "://" in runner:
        from weightsim.extras import check

        check("prefect_dask", "dask", f"--runner {runner}")
    if runner.startswith("pool:") and not os.environ.get("PREFECT_API_URL"):
        raise WeightsimError(f"--runner {runner} places training on the workers of a Prefect server: set "
                             f"PREFECT_API_URL to its API, e.g. http://prefect-host:4200/api")
    if "://" not in runner:
        return
    host, _, port = runner.partition("://")[2].rstrip("/").rpartition(":")
    if not host or not port.isdigit():
        raise WeightsimError(f"--runner {runner!r}: expected a Dask scheduler address tcp://host:port")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as exc:
        raise WeightsimError(f"Dask scheduler {runner} is not reachable: {exc.strerror or exc}") from None


# Each command validates its input first and imports the flows (Prefect, torch, the analysis) after:
# bad input answers in about a second.

def cmd_train(args: argparse.Namespace) -> int:
    opts, dataset = _record(args)
    from .train_sweep import task_runner, train_sweep

    with _session(dataset.name, opts.sweep):
        sweep = train_sweep.with_options(task_runner=task_runner(opts.runner))(opts.to_dict())
    total = sum(map(len, sweep["runs"].values()))
    uri = open_store(opts.store).uri
    print(f"{total} runs in {uri}: {sweep['trained']} trained, {total - sweep['trained']} already there\n"
          f"sweep: {opts.sweep} (weightsim analyze --sweep {opts.sweep} --store {uri})")
    return 0


def _record(args: argparse.Namespace) -> tuple[Options, "Dataset"]:
    """Validate a train/run command and record its sweep in the store (a
    name already used by another sweep is refused here, before training);
    the options come back named (``catalog.named``)."""
    opts, dataset, keys = _prepare(args)
    opts = catalog.named(opts, dataset.fingerprint)
    catalog.save(opts.store, opts.sweep, opts.to_dict(), dataset, keys)
    return opts, dataset


@contextlib.contextmanager
def _session(dataset: str, sweep: str) -> Iterator[str]:
    """The Prefect API (``server.api_server``), every flow and task run
    started inside tagged ``dataset:<name>`` and ``sweep:<name>`` (subflows
    too), and the progress display; yields the line that names the
    dashboard."""
    from prefect import tags

    with server.api_server() as api, tags(f"dataset:{dataset}", f"sweep:{sweep}"), progress.display():
        yield f"dashboard: {api.removesuffix('/api')}"


def cmd_analyze(args: argparse.Namespace) -> int:
    opts, record = _options(args, recorded=True)
    if record is not None:
        uris, info = catalog.table_uris(opts.store, record), record["dataset"]
    else:
        from weightsim.sweep import locate

        dataset, keys = _plan(opts)
        uris, info, opts = locate(opts.store, keys), dataset.describe(), catalog.named(opts, dataset.fingerprint)
    from weightsim.representations import bad_tables_error, plan

    from .analyze import analyze

    if not opts.skip_bad:  # unreadable tables in one line before anything starts (footers only)
        errors = [e for arch, u in uris.items() for e in plan(opts.store, arch, u).bad]
        if errors:
            raise bad_tables_error(errors, opts.dataset)
    with _session(info["name"], opts.sweep):
        print(f"summary: {analyze(opts.to_dict(), uris, info)}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    opts, record = _options(args, recorded=True)
    info = record["dataset"] if record is not None else _plan(opts)[0].describe()
    from weightsim.analysis import read_summary

    opts = catalog.named(opts, info["fingerprint"])
    read_summary(opts.store, info["name"], opts.sweep, opts.archs, info["fingerprint"])
    from .analyze import report

    with _session(info["name"], opts.sweep):
        uris = report(opts.to_dict(), info)
    print(f"report: {uris['html']}\nmarkdown: {uris['md']}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    opts, dataset = _record(args)
    from .pipeline import pipeline

    with _session(dataset.name, opts.sweep) as dashboard:
        uris = pipeline(**{**opts.to_dict(), "archs": ",".join(opts.archs)})
    print(f"report: {uris['html']}\nmarkdown: {uris['md']}\nsummary: {uris['summary']}\n{dashboard}")
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    from .datasets import watch_datasets

    if not math.isfinite(args.interval) or args.interval < 0:
        raise WeightsimError(f"--interval must be a number of seconds >= 0 (got {args.interval})")
    overrides = args.overrides if loader.parse_overrides(args.overrides) else ""
    open_store(args.store).check()
    _check_api()
    with server.api_server():
        while True:
            for uri in watch_datasets(args.store, overrides):
                print(f"announced {uri}")
            if not args.interval:
                return 0
            time.sleep(args.interval)


def cmd_sweeps(args: argparse.Namespace) -> int:
    store = loader.load({"store": args.store}).store
    open_store(store).check_exists()
    entries = catalog.listing(store)
    if not entries:
        print(f"no sweeps recorded in {open_store(store).uri}")
        return 0
    rows = [("SWEEP", "DATASET", "ARCHS", "TRAINED", "ANALYSED", "CREATED")]
    rows += [(e["name"], e["dataset"], ",".join(e["archs"]), f"{e['trained']}/{e['total']}",
              "yes" if e["analysed"] else "no", e["created"]) for e in entries if "damaged" not in e]
    rows += [(e["name"], e["dataset"], "damaged: " + e["damaged"], "", "", "") for e in entries if "damaged" in e]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
    return 0


def cmd_setup(args: argparse.Namespace) -> int:
    if not os.environ.get("PREFECT_API_URL"):
        raise WeightsimError("setup prepares a Prefect server: set PREFECT_API_URL to its API, e.g. "
                             "http://prefect-host:4200/api")
    slots = args.gpu_slots
    if slots is None:
        import torch

        slots = max(1, torch.cuda.device_count())
    import httpx

    try:
        lines = setup.setup(args.pool, args.gpu_limit, slots, args.unresponsive_after)
    except (httpx.HTTPError, OSError) as exc:
        raise WeightsimError(f"the Prefect server at {os.environ['PREFECT_API_URL']} did not answer: {exc}") from None
    print("\n".join(lines))
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from .worker import devices, run_workers

    return run_workers(args.pool, devices(args.gpus, args.cpus), args.name)


def cmd_import(args: argparse.Namespace) -> int:
    from weightsim.zoo import import_zoo

    catalog.check_sweep_name(args.sweep)
    store = loader.load({"store": args.store}).store
    out = import_zoo(store, args.manifest, args.spec, args.dataset, args.sweep, args.names)
    print(f"imported {out['runs']} networks ({out['written']} new) as arch {out['arch']} of sweep {out['sweep']}: "
          f"{out['record']}\nnext: weightsim analyze --sweep {out['sweep']} --store {store}")
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from weightsim.datasets import BUILTINS, FILE_KINDS, load_dataset

    for name in BUILTINS:
        try:
            d = load_dataset(name).describe()
        except WeightsimError as exc:  # e.g. mnist1d without its extra: the others are still listed
            print(f"{name:10s} not available: {exc}")
            continue
        print(f"{name:10s} {d['classes']:3d} classes  shape {'x'.join(map(str, d['shape'])):8s} "
              f"{d['n_train']:6d} train {d['n_test']:6d} test  fingerprint {d['fingerprint']}")
    if args.store:
        st = open_store(args.store)
        st.check_exists()
        for key in st.glob("datasets/*"):
            name = key.split("/", 1)[1]
            try:
                print(f"{name:10s} registered: {st.key_uri(key)}")
            except WeightsimError as exc:  # one badly named file hides no other
                print(f"{name!r:10s} not usable: {exc}")
    print(f"user data: a path or URI to {', '.join(FILE_KINDS)}")
    return 0


def cmd_server(args: argparse.Namespace) -> int:
    where = f"PREFECT_HOME={server.home()}"
    if args.action == "stop":
        stopped = server.stop()
        print(f"stopped the local Prefect server (pid {stopped.pid}, port {stopped.port})" if stopped
              else f"no local Prefect server running ({where})")
        return 0
    if args.action == "logs":
        if args.lines < 1:
            raise WeightsimError(f"--lines must be at least 1 (got {args.lines})")
        try:
            with open(server.log_path(), errors="replace") as f:
                print("".join(collections.deque(f, args.lines)), end="")
        except FileNotFoundError:
            print(f"no log yet: {server.log_path()}")
        return 0
    running = server.ensure() if args.action == "start" else server.recorded()
    if running is None or not running.healthy():
        print(f"local Prefect server: {'starting' if running else 'not running'} ({where}); the next command "
              f"that needs it starts it, or: weightsim server start")
    else:
        print(f"local Prefect server: running, pid {running.pid} ({where})\ndashboard: {running.dashboard}\n"
              f"api: {running.api_url}\nlog: {server.log_path()}")
    if os.environ.get("PREFECT_API_URL"):
        print(f"note: PREFECT_API_URL is set, so commands use {os.environ['PREFECT_API_URL']} instead")
    return 0


COMMANDS = {"run": cmd_run, "train": cmd_train, "analyze": cmd_analyze, "report": cmd_report,
            "watch": cmd_watch, "datasets": cmd_datasets, "sweeps": cmd_sweeps, "setup": cmd_setup,
            "import": cmd_import, "server": cmd_server,
            "worker": cmd_worker}


CONSOLE_LEVEL = "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"


def main(argv: Sequence[str] | None = None) -> int:
    one_line_errors()
    args = make_parser().parse_args(argv)
    previous = signal.signal(signal.SIGINT, _interrupt) if threading.current_thread() is threading.main_thread() \
        else None
    # read when Prefect sets up its logging: the terminal shows progress, not every log line; for this
    # command only (the processes it starts, e.g. Dask workers, inherit it; later ones do not)
    quiet = not getattr(args, "verbose", True) and CONSOLE_LEVEL not in os.environ
    if quiet:
        os.environ[CONSOLE_LEVEL] = "WARNING"
    try:
        return COMMANDS[args.command](args)
    except WeightsimError as exc:
        print(f"weightsim: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _said.set()
        print("weightsim: interrupted", file=sys.stderr)
        return 130
    finally:
        if quiet:
            os.environ.pop(CONSOLE_LEVEL, None)
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


EXIT_GRACE = 5.0  # seconds an interrupted process may take to stop cleanly before it ends anyway
_said = threading.Event()  # "interrupted" was printed


def _interrupt(signum, frame) -> None:
    """SIGINT (Ctrl-C): interrupt the main thread as Python does, and end the
    process within ``EXIT_GRACE`` seconds whatever else runs. The flow's
    tasks run on worker threads that a ``KeyboardInterrupt`` does not reach,
    and the flow waits for them while it unwinds (a training chunk: minutes).
    Written tables are whole (atomic writes); the claims of a gone process
    are taken over at once."""
    if not any(t.name == "weightsim-exit" for t in threading.enumerate()):
        threading.Thread(target=_exit_after_grace, daemon=True, name="weightsim-exit").start()
    raise KeyboardInterrupt


def _exit_after_grace() -> None:
    """The process's end (the local Prefect server runs on in its own session)."""
    time.sleep(EXIT_GRACE)
    if not _said.is_set():
        print("weightsim: interrupted", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)


if __name__ == "__main__":
    sys.exit(main())
