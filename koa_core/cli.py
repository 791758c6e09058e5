"""The ``koa`` command line: data tools, training, evaluation, prediction, benchmarks.

Every subcommand is registered by a small ``add_*`` function and runs through
:func:`main`, which turns user errors (:class:`~koa_core.errors.KoaError`, bad options)
into one line ``koa: error: ...`` and exit status 2, never a traceback. Heavy imports
(torch, albumentations) happen inside the commands so ``koa --help`` stays quick.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import __version__
from .errors import KoaError

__all__ = ["build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad option as one ``koa: error:`` line (exit 2)."""

    def error(self, message: str):  # noqa: D401 - argparse API
        raise KoaError(message)


# ---------------------------------------------------------------- data commands
def _cmd_synth(args) -> int:
    from .phantom import write_phantom

    if args.per_class < 1:
        raise KoaError("--per-class must be at least 1")
    if args.size < 32:
        raise KoaError("--size must be at least 32")
    summary = write_phantom(args.out, per_class=args.per_class, seed=args.seed, size=args.size,
                            proportions=args.proportions)
    print(f"wrote {summary['images']} images of {summary['patients']} synthetic patients "
          f"to {args.out}")
    for split, c in summary["counts"].items():
        print(f"  {split:<6}" + " ".join(f"KL{g}={n}" for g, n in c.items()))
    return 0


def _index(args):
    from .data import discover
    from .cache import default_cache_dir

    return discover(args.root, seed=getattr(args, "seed", 0),
                    manifest_dir=Path(args.cache_dir or default_cache_dir()) / "manifests")


def _cmd_data_check(args) -> int:
    from .datacheck import format_check, scan

    rep = scan(_index(args), workers=args.workers)
    print(format_check(rep, allow_leakage=args.allow_leakage))
    return 0 if rep.usable(args.allow_leakage) else 1


def _cmd_data_stats(args) -> int:
    from .datacheck import scan

    rep = scan(_index(args), workers=args.workers)
    d = rep.to_dict()
    if args.json:
        print(json.dumps(d, indent=2))
    else:
        for k, v in d.items():
            print(f"{k}: {v}")
    return 0


def add_data_commands(sub) -> None:
    p = sub.add_parser("synth", help="write the synthetic knee phantom in the public layout")
    p.add_argument("out", help="output folder (must not exist or be empty)")
    p.add_argument("--per-class", type=int, default=40, help="images per grade (default 40)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=224, help="image side in pixels (default 224)")
    p.add_argument("--proportions", choices=["balanced", "paper"], default="balanced",
                   help="equal grades, or the paper's imbalance (Table 1)")
    p.set_defaults(func=_cmd_synth)

    data = sub.add_parser("data", help="inspect a dataset root")
    dsub = data.add_subparsers(dest="data_cmd", required=True, parser_class=_Parser)
    for name, func, hlp in (("check", _cmd_data_check, "counts, patients, leakage, "
                             "unreadable files, sizes; exit 0 if usable, 1 if not"),
                            ("stats", _cmd_data_stats, "the same facts as data")):
        q = dsub.add_parser(name, help=hlp)
        q.add_argument("root", help="dataset root: ROOT/{train,val,test}/{0..4} or ROOT/{0..4}")
        q.add_argument("--workers", type=int, default=os.cpu_count() or 1)
        q.add_argument("--seed", type=int, default=0, help="split seed for a flat root")
        q.add_argument("--cache-dir", default=None,
                       help="where a flat root's split manifest is written")
        q.add_argument("--allow-leakage", action="store_true",
                       help="do not count patients in two splits as a problem")
        if name == "stats":
            q.add_argument("--json", action="store_true", help="print JSON")
        q.set_defaults(func=func)


# ---------------------------------------------------------------- parser and main
def build_parser() -> argparse.ArgumentParser:
    """The full ``koa`` parser (tests build and inspect it)."""
    parser = _Parser(prog="koa", description="Knee osteoarthritis KL grading: dual-stream "
                     "ResNet-18 with cross-attention (data, training, evaluation, prediction).")
    parser.add_argument("--version", action="version", version=f"koa_core {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    add_data_commands(sub)
    for extra in _EXTRA_COMMANDS:
        extra(sub)
    return parser


# Other modules append their add_* functions here (train, evaluate, predict, bench, book).
_EXTRA_COMMANDS: list = []


def main(argv: list[str] | None = None) -> int:
    """Entry point: run a subcommand; user errors become one line and exit 2."""
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except KoaError as exc:
        print(f"koa: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("koa: error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `koa data stats ROOT --json | head`
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
