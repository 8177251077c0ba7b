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
    p.add_argument("--problems", type=int, help="number of class-pair problems (default 5)")
    p.add_argument("--seeds", type=int, help="seeds per problem (default 8)")
    p.add_argument("--epochs", type=int, help="training epochs (default 10)")
    p.add_argument("--store", help="store root: a local folder or s3://bucket/prefix (default ./store)")
    p.add_argument("--device", help="auto, cpu or cuda (default auto)")
    p.add_argument("--checkpoints", help="epochs to keep, e.g. 0,10,final (default 0,final)")
    p.add_argument("--lr", type=float, help="learning rate (default: per arch)")
    p.add_argument("--batch-size", dest="batch_size", type=int, help="mini-batch size (default 32)")
    p.add_argument("--config", help="TOML file with any of these options (the command line wins)")


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="weightsim", description="Weight similarity of neural-network solution sets.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("train", help="train the solution sets of a sweep into the store")
    _sweep_options(p)
    p = sub.add_parser("datasets", help="list the datasets weightsim can use")
    p.add_argument("--store", help="also list datasets registered under <store>/datasets/")
    return parser


def _options(args: argparse.Namespace):
    from .config import load_options

    cli = {k: v for k, v in vars(args).items() if k not in ("command", "config")}
    return load_options(cli, args.config)


def cmd_train(args: argparse.Namespace) -> int:
    from .datasets import load_dataset
    from .runs import parse_checkpoints
    from .store import open_store
    from .sweep import default_config, plan, train_missing

    opts = _options(args)
    dataset = load_dataset(opts.dataset)
    store = open_store(opts.store)
    device = opts.resolved_device()
    keys = plan(dataset, opts.archs, opts.problems, range(opts.seeds),
                lambda a: default_config(a, epochs=opts.epochs, lr=opts.lr, batch_size=opts.batch_size,
                                         checkpoints=parse_checkpoints(opts.checkpoints, opts.epochs)),
                k=opts.classes_per_problem)
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


COMMANDS = {"train": cmd_train, "datasets": cmd_datasets}


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
