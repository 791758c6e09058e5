"""The ``koa`` command line: data tools, training, evaluation, prediction, benchmarks.

Every subcommand is registered by a small ``add_*`` function and runs through
:func:`main`, which turns user errors (:class:`~koa_core.errors.KoaError`, bad options)
into one line ``koa: error: ...`` and exit status 2, never a traceback. Heavy imports
(torch, albumentations) happen inside the commands so ``koa --help`` stays quick.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sys
from pathlib import Path

from koa_core import __version__
from koa_core.config import ENGINES, TTA_CHOICES
from koa_core.errors import KoaError, printable

__all__ = ["build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad option as one ``koa: error:`` line (exit 2)."""

    def error(self, message: str):
        raise KoaError(message)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {value})")
    return value


# ---------------------------------------------------------------- data commands
def _cmd_synth(args) -> int:
    from koa_core.data.phantom import write_phantom

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
    from koa_core.data.cache import default_cache_dir
    from koa_core.data.index import discover

    return discover(args.root, seed=getattr(args, "seed", 0),
                    manifest_dir=Path(args.cache_dir or default_cache_dir()) / "manifests")


def _input_check(args):
    from koa_core.infer.profile import check_for
    from koa_core.model.checkpoint import read_sidecar

    return check_for(read_sidecar(args.checkpoint) if args.checkpoint else {})


def _cmd_data_check(args) -> int:
    from koa_core.data.check import format_check, scan

    rep = scan(_index(args), workers=args.workers, check=_input_check(args))
    print(format_check(rep, allow_leakage=args.allow_leakage))
    return 0 if rep.usable(args.allow_leakage) else 1


def _cmd_data_stats(args) -> int:
    from koa_core.data.check import scan

    rep = scan(_index(args), workers=args.workers, check=_input_check(args))
    d = rep.to_dict()
    if args.json:
        from koa_core.runtime import provenance

        d["provenance"] = provenance(getattr(args, "command_line", ""))
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
        q.add_argument("--workers", type=_positive_int, default=os.cpu_count() or 1)
        q.add_argument("--seed", type=int, default=0, help="split seed for a flat root")
        q.add_argument("--cache-dir", default=None,
                       help="where a flat root's split manifest is written")
        q.add_argument("--allow-leakage", action="store_true",
                       help="do not count patients in two splits as a problem")
        q.add_argument("--checkpoint", default=None, help="judge the images by this "
                       "checkpoint's input profile (default: the shipped checkpoint's)")
        if name == "stats":
            q.add_argument("--json", action="store_true", help="print JSON")
        q.set_defaults(func=func)


# ---------------------------------------------------------------- model commands
def _cmd_train(args) -> int:
    from koa_core.config import apply_overrides, load_config

    if args.resume:
        if args.config:
            raise KoaError("--resume continues the run's saved config; use --set to change "
                           "a value, not --config")
        from koa_core.train.engine import load_run_config

        cfg = apply_overrides(load_run_config(args.out), args.set)
    else:  # a bad setting fails here, in a fraction of a second, before torch is imported
        cfg = load_config(args.config, args.set)
    if args.data:
        cfg.data.root = args.data
    # The folder's lock is taken before torch is imported, so a second `koa train` into it
    # is refused at once; fit() holds it again (re-entrant). Under torchrun, rank 0 holds it.
    from koa_core.locking import FolderLock, writes_the_folder

    try:
        with (FolderLock(args.out, "training a run") if writes_the_folder()
              else contextlib.nullcontext()):
            from koa_core.train.engine import fit

            summary = fit(cfg, args.out, resume=args.resume, progress=not args.quiet)
    except KeyboardInterrupt:
        state = Path(args.out) / "last_state.safetensors"
        if not state.exists():
            raise KoaError("interrupted before the first epoch completed; nothing was "
                           "saved") from None
        raise KoaError(f"interrupted; the last completed epoch is saved in {args.out}; "
                       f"continue with: koa train --resume --out {args.out}") from None
    metric = cfg.train.select_metric
    chosen = ("the last epoch" if metric == "last" else
              f"best val {metric} {summary['best_' + metric]:.4f}")
    if writes_the_folder():  # under torchrun, one summary, not one per rank
        print(f"done: {summary['epochs_run']} epoch(s) in {summary['seconds']:.0f} s; {chosen}; "
              f"checkpoint {args.out}/best.safetensors")
    return 0


def _cmd_evaluate(args) -> int:
    from koa_core.infer.evaluate import evaluate_checkpoint
    from koa_core.metrics.classification import format_report

    m = evaluate_checkpoint(args.checkpoint, args.data, split=args.split, out=args.out,
                            predictions=args.predictions, batch_size=args.batch_size,
                            n_boot=args.n_boot, cache_dir=args.cache_dir,
                            allow_leakage=args.allow_leakage, progress=not args.quiet,
                            tta=args.tta, ensemble=args.ensemble, engine=args.engine,
                            calibrated=not args.uncalibrated)
    extra = (", flip TTA" if m.get("tta") else "") + (
        f", ensemble of {len(m['ensemble'])}" if m.get("ensemble") else "") + (
        ", temperature " + "/".join("none" if t is None else f"{t:.3f}"
                                    for t in m["temperatures"])
        if any(t is not None for t in m["temperatures"]) else "")
    print(f"{m['checkpoint']} on {args.data} [{args.split}], n = {m['n']}{extra}; "
          f"{m['precision']}")
    print(format_report(m))
    if m.get("conformal"):
        print(_evaluated_sets(m["conformal"]))
    return 0


def _evaluated_sets(c: dict) -> str:
    """The conformal sets' coverage and size on the evaluated knees, overall and per grade."""
    lo, hi = c["coverage_ci"]
    per = "; ".join(f"KL{g} {v['coverage']:.2f} ({v['mean_set_size']:.1f})"
                    for g, v in c["per_grade"].items())
    return (f"sets of grades ({c['method']}, target {100 * c['target']:g} %): coverage "
            f"{c['coverage']:.3f} [{lo:.3f}, {hi:.3f}], {c['mean_set_size']:.2f} grades per "
            f"set; per grade, coverage (mean size): {per}")


def _cmd_predict(args) -> int:
    _check_output_kinds(args)  # before the heavy imports: a FIFO is one line at once
    from koa_core.infer.predict import BatchOptions, grade_batch
    from koa_core.runtime import sigterm_as_interrupt

    to_csv = bool(args.out)
    opts = BatchOptions(checkpoint=args.checkpoint, engine=args.engine,
                        calibrated=not args.uncalibrated, cam_dir=args.cam,
                        report_dir=args.report, out=args.out, batch_size=args.batch_size,
                        keep=args.json,
                        progress=to_csv and (args.progress or (sys.stderr.isatty()
                                                               and not args.quiet)))

    def echo(p):  # a line per file as it is graded: errors only when rows go to a CSV
        if p.error and (to_csv or not args.json):
            print(p.line(), file=sys.stderr, flush=True)
        elif not (to_csv or args.json):
            print(p.line(), flush=True)

    try:
        with sigterm_as_interrupt():
            result = grade_batch(args.images, opts, echo)
    except KeyboardInterrupt:
        where = f"; the rows of the files graded so far are in {args.out}" if to_csv else ""
        print(f"koa: error: interrupted{where}", file=sys.stderr)
        return 130
    if args.json:  # to_dict gives null for a number that is not finite: never bare NaN
        print(json.dumps([p.to_dict() for p in result.kept], indent=2, allow_nan=False))
    if to_csv or result.skipped or result.followed or result.repeated:
        print(result.summary(args.out), file=sys.stderr)
    return 1 if result.failed else 0


def _check_output_kinds(args) -> None:
    """Refuse a CSV or report index that exists and is not a regular file (a FIFO would
    block for ever) without opening it; grade_batch checks every output again."""
    from koa_core.files import check_output_file

    if args.out:
        check_output_file(args.out, "the CSV")
    if args.report:
        check_output_file(Path(args.report) / "index.html", "the report's index")


def add_model_commands(sub) -> None:
    """train, evaluate, calibrate, input-profile and predict."""
    for add in (_add_train, _add_evaluate, _add_calibrate, _add_input_profile, _add_predict):
        add(sub)


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a model (config YAML + --set overrides)")
    p.add_argument("--config", action="append", default=[],
                   help="YAML file or bundled profile (demo, paper, ablation-raw, "
                   "ablation-clahe, ablation-dual-noattn); repeat to stack, later wins")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=5 (repeatable)")
    p.add_argument("--data", help="dataset root (same as --set data.root=ROOT)")
    p.add_argument("--out", required=True, help="run folder for history, config, checkpoints")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar or epoch lines")
    p.set_defaults(func=_cmd_train)


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="metrics of a checkpoint on a split")
    p.add_argument("--checkpoint", help="a .safetensors checkpoint (default: the shipped one)")
    p.add_argument("--data", required=True, help="dataset root")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--out", help="write metrics JSON here")
    p.add_argument("--predictions", help="write per-image predictions CSV here")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the CIs")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--allow-leakage", action="store_true")
    p.add_argument("--tta", choices=list(TTA_CHOICES), default=None,
                   help="test-time augmentation: flip = mean of each knee and its mirror")
    p.add_argument("--ensemble", action="append", default=[], metavar="CHECKPOINT",
                   help="average the probabilities with this checkpoint's (repeatable); "
                   "reported apart from single models")
    _add_engine(p)
    _add_uncalibrated(p)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_evaluate)


def _sidecar_writer_args(p, what: str, split: str) -> None:
    """--checkpoint (whose sidecar gets ``what``) and --data (of which ``split`` is read)."""
    p.add_argument("--checkpoint", required=True, help="the .safetensors checkpoint whose "
                   f"sidecar gets {what}")
    p.add_argument("--data", required=True, help=f"dataset root (only its {split} split is read)")


def _add_calibrate(sub) -> None:
    p = sub.add_parser("calibrate", help="fit the checkpoint's temperature and its conformal "
                       "sets of grades on the validation knees and store them in its sidecar "
                       "(probabilities and sets, not grades, change)")
    _sidecar_writer_args(p, "the temperature and the conformal sets", "val")
    p.add_argument("--coverage", type=float, default=0.90, help="the share of knees whose "
                   "set of grades holds the true grade (default 0.90)")
    p.add_argument("--sets", choices=("ordinal", "lac"), default="ordinal",
                   help="ordinal: runs of neighbouring grades (KL1–KL3; default); lac: the "
                   "grades probable enough, contiguous or not")
    p.add_argument("--class-conditional", action="store_true", help="one threshold per "
                   "true grade, so that each grade (KL4 too) gets the coverage on its own")
    p.add_argument("--batch-size", type=_positive_int, default=64)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--allow-leakage", action="store_true")
    _add_engine(p)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_calibrate)


def _add_input_profile(sub) -> None:
    p = sub.add_parser("input-profile", help="fit the input check's profile on training images "
                       "and store it in the checkpoint's sidecar (koa_core.data.inputcheck)")
    _sidecar_writer_args(p, "the profile", "train")
    p.add_argument("--images", type=_positive_int, default=1000,
                   help="training images drawn for the profile (default 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_input_profile)


def _add_predict(sub) -> None:
    p = sub.add_parser(
        "predict", help="grade knee images and folders (CSV, Grad-CAM, reports)",
        epilog="Each grade comes with its set of grades at the coverage koa calibrate fitted "
        "(e.g. 'set KL1–KL3 at 90 %': for 90 % of knees like the validation knees the true "
        "grade is in the set; a flagged input is not such a knee). What the shipped "
        "checkpoint is for and not for, and how it grades: its model card, the book's page "
        "book/model_card.md (written by make book). A research tool, not a diagnosis.")
    p.add_argument("images", nargs="+", metavar="DIR_OR_FILE",
                   help="image files (PNG, JPEG, WebP, TIFF, DICOM) or folders to walk")
    p.add_argument("--checkpoint", help="a .safetensors checkpoint or an ONNX file from "
                   "koa export --onnx (default: the shipped checkpoint)")
    _add_engine(p)
    _add_uncalibrated(p)
    p.add_argument("--out", metavar="CSV", help="write one row per file here (grade, "
                   "probabilities, set of grades, gate, precision, error), each row as soon "
                   "as it is graded")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--cam", metavar="DIR", help="write each stream's Grad-CAM over the input "
                   "image, at its own resolution, here")
    p.add_argument("--report", metavar="DIR", help="write one explanation picture per knee and "
                   "an index.html here")
    p.add_argument("--batch-size", type=_positive_int, default=16)
    p.add_argument("--progress", action="store_true",
                   help="progress bar with --out even when stderr is not a terminal")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_predict)


def _add_uncalibrated(p) -> None:
    p.add_argument("--uncalibrated", action="store_true",
                   help="plain softmax probabilities, ignoring a temperature fitted by "
                   "koa calibrate (a single model's grades are the same)")


def _cmd_calibrate(args) -> int:
    from koa_core.infer.evaluate import SetOptions, calibrate_checkpoint
    from koa_core.model.checkpoint import sidecar_path

    c = calibrate_checkpoint(args.checkpoint, args.data, batch_size=args.batch_size,
                             cache_dir=args.cache_dir, allow_leakage=args.allow_leakage,
                             progress=not args.quiet, engine=args.engine,
                             command=args.command_line,
                             sets=SetOptions(args.coverage, args.sets, args.class_conditional))
    x = c["cross_fitted"]
    print(f"temperature {c['temperature']:.3f} fitted on {c['knees']} validation knees and "
          f"stored in {sidecar_path(args.checkpoint)}\n"
          f"  NLL {c['nll']['before']:.4f} -> {c['nll']['after']:.4f}, "
          f"ECE {c['ece']['before']:.4f} -> {c['ece']['after']:.4f} (fitted on these knees)\n"
          f"  cross-fitted over patients: NLL {x['nll']:.4f}, ECE {x['ece']:.4f} "
          f"(fold temperatures {', '.join(f'{t:.3f}' for t in x['fold_temperatures'])})")
    print(_sets_line(c["conformal"], c["conformal_skipped"]))
    return 0


def _sets_line(conf: dict | None, skipped: str | None) -> str:
    if conf is None:
        return f"  no sets of grades stored: {skipped}"
    m = conf["measured"]
    per = "per grade " if conf["class_conditional"] else ""
    return (f"  {conf['method']} sets of grades at {100 * conf['coverage']:g} % ({per}"
            f"threshold{'s' if per else ''} from {conf['n']} knees): on them, coverage "
            f"{m['coverage']:.3f}, {m['mean_set_size']:.2f} grades per set on average")


def _cmd_input_profile(args) -> int:
    from koa_core.infer.profile import store_profile
    from koa_core.model.checkpoint import sidecar_path

    prof = store_profile(args.checkpoint, args.data, args.images, args.seed,
                         command=args.command_line)
    print(f"input profile of {prof['what']} stored in {sidecar_path(args.checkpoint)} "
          f"({prof['knee']['inverted_in_training']} of them stored inverted)")
    return 0


def _add_engine(p) -> None:
    p.add_argument("--engine", default=os.environ.get("KOA_ENGINE", "auto"),
                   choices=list(ENGINES),
                   help="what runs the network: auto (default, or $KOA_ENGINE) is torch on a "
                   "GPU or a CPU with native bf16 and ONNX Runtime fp32 elsewhere (an export "
                   "of the checkpoint made once and cached); int8 needs a file from "
                   "koa export --onnx --int8")


def _cmd_bench(args) -> int:
    from koa_core.bench import bench_bomb, format_bomb, format_table, run_benchmarks

    if args.bomb:
        r = bench_bomb()
        print(json.dumps(r, indent=2) if args.json else format_bomb(r))
        _save_bench(args, r)
        return 0

    r = run_benchmarks(args.data, n_images=args.images, size=args.size, batch=args.batch,
                       steps=args.steps, workers=args.workers, compile_=args.compile,
                       skip_model=args.skip_model, fed_steps=args.fed_steps, onnx=args.onnx,
                       checkpoint=args.checkpoint, agreement_images=args.agreement_images)
    print(json.dumps(r, indent=2) if args.json else format_table(r))
    _save_bench(args, r)
    return 0


def _save_bench(args, r: dict) -> None:
    """``--save FILE``: the figures with their provenance (command, commit, machine)."""
    if not args.save:
        return
    import torch

    from koa_core.runtime import provenance, resolve_device

    r["provenance"] = {**provenance(getattr(args, "command_line", ""), resolve_device()),
                       "threads": torch.get_num_threads()}
    Path(args.save).write_text(json.dumps(r, indent=2) + "\n")


def add_bench_command(sub) -> None:
    p = sub.add_parser("bench", help="throughput of the input pipeline and the model "
                       "against a plain baseline (prints figures)")
    p.add_argument("--data", help="dataset root (default: a temporary phantom)")
    p.add_argument("--images", type=_positive_int, default=256,
                   help="images for the pipeline benchmark (default 256)")
    p.add_argument("--size", type=_positive_int, default=224)
    p.add_argument("--batch", type=_positive_int, default=32)
    p.add_argument("--steps", type=_positive_int, default=3, help="timed steps per model setting")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    p.add_argument("--compile", action="store_true", help="also time torch.compile")
    p.add_argument("--skip-model", action="store_true", help="input pipeline only")
    p.add_argument("--fed-steps", type=int, default=None,
                   help="steps of training fed by the input pipeline (default: 100 on a GPU, "
                   "0 on a CPU)")
    p.add_argument("--onnx", action="store_true", help="also time ONNX Runtime fp32 and int8 "
                   "beside torch on a checkpoint, with their agreement on the val split")
    p.add_argument("--checkpoint", help="with --onnx: the checkpoint (default: the shipped one)")
    p.add_argument("--agreement-images", type=_positive_int, default=None,
                   help="with --onnx: validation knees for the agreement (default: all)")
    p.add_argument("--bomb", action="store_true", help="only the peak memory of reading "
                   "decompression-bomb PNGs (each in a fresh process)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument("--save", metavar="FILE", help="also write the figures as JSON to FILE")
    p.set_defaults(func=_cmd_bench)


def _cmd_book(args) -> int:
    from koa_core.book.build import run_book

    r = run_book(args.profile, data=args.data, sets=args.set, root=args.root, only=args.only,
                 html=not args.no_html)
    total = sum(r["seconds"].values())
    print(f"koa book: {len(r['seconds'])} chapter(s) executed in {total:.0f} s"
          + (f"; HTML in {r['html']}" if r["html"] else ""))
    return 0


def add_book_command(sub) -> None:
    p = sub.add_parser("book", help="execute the book's chapters (papermill) and build the "
                       "HTML (jupyter-book)")
    p.add_argument("--profile", default="demo",
                   help="book/profiles/NAME.yaml: demo (synthetic phantom, CPU) or paper "
                   "(a real dataset via --data, GPU); or a YAML path")
    p.add_argument("--data", help="dataset root ROOT/{train,val,test}/{0..4} (required by paper)")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="override a book parameter, e.g. --set n_boot=200 (repeatable)")
    p.add_argument("--root", help="the project folder holding _config.yml (default: here)")
    p.add_argument("--only", action="append", metavar="NAME",
                   help="execute only chapters whose name contains NAME (repeatable)")
    p.add_argument("--no-html", action="store_true", help="execute, but skip jupyter-book")
    p.set_defaults(func=_cmd_book)


def _cmd_export(args) -> int:
    if args.onnx:
        return _export_onnx(args)
    from koa_core.train.export import export_run

    if not args.dataset:
        raise KoaError("--dataset is required: say what the run was trained on, in words")
    if args.run is None:
        raise KoaError("name the run folder to export")
    _check_export_out(args.out, Path(args.run) / "best.safetensors", args.run,
                      sidecar_too=True)
    path = export_run(args.run, args.out, dataset=args.dataset, note=args.note,
                      dtype=args.dtype)
    _publish(path, path.with_suffix(".json"))
    print(f"wrote {path} and {path.with_suffix('.json')}")
    return 0


def _check_export_out(out: str, src: Path, run: str | None, sidecar_too: bool) -> None:
    """Refuse, before anything is written, an export whose --out (or, for a safetensors
    export, the sidecar beside it) is the source checkpoint, its sidecar or any file of its
    run folder, or is not a regular file (a FIFO, a device, a folder)."""
    from koa_core.files import check_output_file, refuse_same_file

    outs = {"--out": Path(out)}
    if sidecar_too:
        outs["the sidecar of --out"] = Path(out).with_suffix(".json")
    sources = [src, src.with_suffix(".json")]
    if run and Path(run).is_dir():
        sources += sorted(p for p in Path(run).iterdir() if p.is_file())
    refuse_same_file(outs, sources, source="the source checkpoint, its sidecar or a file of "
                     "its run")
    for path in outs.values():
        check_output_file(path, "the export")


def _publish(*paths: Path) -> None:
    """Exported files get the umask's mode (their writers create them 0600)."""
    from koa_core.files import publish_mode

    for path in paths:
        publish_mode(path)


def _export_onnx(args) -> int:
    from koa_core.infer.backends import calibration_views, export_onnx
    from koa_core.locking import FolderLock
    from koa_core.model.checkpoint import read_sidecar, resolve_checkpoint

    src = Path(args.run) / "best.safetensors" if args.run and Path(args.run).is_dir() \
        else resolve_checkpoint(args.run)
    if not src.is_file():
        raise KoaError(f"{src}: no such checkpoint")
    _check_export_out(args.out, src, args.run, sidecar_too=False)
    calibration = None
    if args.int8:
        if not args.calibrate:
            raise KoaError("--int8 needs --calibrate ROOT: training knees whose activations "
                           "set the int8 ranges")
        calibration = calibration_views(args.calibrate, read_sidecar(src),
                                        args.calibration_images)
    elif args.calibrate:
        raise KoaError("--calibrate is only used with --int8")
    with FolderLock(Path(args.out).parent, "exporting a checkpoint"):
        path = export_onnx(src, args.out, calibration=calibration)
        _publish(path)
    kind = f"int8, calibrated on {len(calibration)} training knees" if args.int8 else "fp32"
    print(f"wrote {path} ({kind}) from {src}")
    return 0


def add_export_command(sub) -> None:
    p = sub.add_parser("export", help="publish a run's best checkpoint (bf16, no local paths), "
                       "or export a checkpoint to ONNX (--onnx)")
    p.add_argument("run", nargs="?", help="run folder holding best.safetensors (with --onnx "
                   "also a .safetensors checkpoint; default there: the shipped one)")
    p.add_argument("--out", required=True, help="output .safetensors (or .onnx) path")
    p.add_argument("--dataset", help="what it was trained on, in words (safetensors export)")
    p.add_argument("--note", default="", help="free text stored in the sidecar")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--onnx", action="store_true", help="write an ONNX file for "
                   "--engine onnxruntime (the sidecar travels in its metadata)")
    p.add_argument("--int8", action="store_true", help="with --onnx: static int8 quantization")
    p.add_argument("--calibrate", metavar="ROOT", help="dataset whose training split "
                   "calibrates the int8 ranges")
    p.add_argument("--calibration-images", type=_positive_int, default=64)
    p.set_defaults(func=_cmd_export)


def _cmd_pretrain(args) -> int:
    from koa_core.train.pretrain import PretrainConfig, pretrain

    cfg = PretrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                         temperature=args.temperature, image_size=args.size, seed=args.seed,
                         max_steps_per_epoch=args.max_steps_per_epoch)
    try:
        side = pretrain(args.data, args.out, cfg, progress=not args.quiet,
                        command=getattr(args, "command_line", None))
    except KeyboardInterrupt:
        raise KoaError(f"interrupted; nothing was written to {args.out}") from None
    last = side["history"][-1]
    print(f"wrote {args.out}: {len(side['history'])} epoch(s) in {side['seconds']:.0f} s, "
          f"final NT-Xent {last['loss']:.4f}; use it with --set model.pretrained={args.out}")
    return 0


def add_pretrain_command(sub) -> None:
    p = sub.add_parser("pretrain", help="self-supervised (SimCLR) pretraining of the shared "
                       "trunk on the train and val knees, for model.pretrained=PATH")
    p.add_argument("--data", required=True, help="dataset root (its test split is never read)")
    p.add_argument("--out", required=True, help="the trunk's .safetensors path")
    p.add_argument("--epochs", type=_positive_int, default=20)
    p.add_argument("--batch-size", type=_positive_int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--temperature", type=float, default=0.1, help="NT-Xent temperature")
    p.add_argument("--size", type=_positive_int, default=224, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-steps-per-epoch", type=_positive_int, default=None)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_pretrain)


def _cmd_runs(args) -> int:
    from koa_core.train.runs import format_runs, summarize_run

    rows = [summarize_run(r) for r in args.runs]
    print(json.dumps(rows, indent=2) if args.json else format_runs(rows))
    return 0


def add_runs_command(sub) -> None:
    p = sub.add_parser("runs", help="compare finished runs: selected epoch, validation "
                       "figures, images/s, GPU utilisation")
    p.add_argument("runs", nargs="+", help="run folders written by koa train")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_runs)


# ---------------------------------------------------------------- campaigns and records
def _cmd_campaign(args) -> int:
    from koa_core.experiments.ablation import ablation_table, format_ablation
    from koa_core.experiments.campaign import run_campaign

    if args.time_limit is not None and args.time_limit <= 0:
        raise KoaError("--time-limit must be positive (seconds)")
    r = run_campaign(args.plan, args.data, args.runs, args.records, time_limit=args.time_limit,
                     data_encoding=args.data_encoding, data_name=args.data_name,
                     only=args.only, progress=args.progress, command=args.command_line,
                     overrides=args.set, data_copy=args.data_copy, size_to=args.size,
                     rates=_given_rates(args), size_only=args.size_only)
    if args.size_only:
        print(f"campaign: sized only, {len(r['sized'])} run(s) fit; sizing in {args.size}")
        return 0
    print(f"campaign: {len(r['done'])} run(s) trained, {len(r['skipped'])} already recorded, "
          f"{len(r['remaining'])} left, in {r['seconds']:.0f} s"
          + (f"; stopped: {r['stopped']}" if r["stopped"] else ""))
    if r["done"] or r["skipped"]:
        print(format_ablation(ablation_table(args.records)))
    return 0 if not r["remaining"] else 3


def _given_rates(args):
    """``--epoch-s`` and friends as sizing figures; None: a timed probe measures them."""
    from koa_core.experiments.sizing import Rates

    if (args.size_only or args.epoch_s is not None) and args.size is None:
        raise KoaError("--size-only and --epoch-s go with --size FILE")
    if args.epoch_s is None:
        if args.single_epoch_s is not None or args.overhead_s is not None:
            raise KoaError("--single-epoch-s and --overhead-s go with --epoch-s")
        return None
    return Rates(args.epoch_s, args.single_epoch_s, args.overhead_s or 0.0,
                 source="given on the command line")


def _cmd_record(args) -> int:
    from koa_core.experiments.campaign import record_run, resolve_copy
    from koa_core.train.engine import load_run_config, prepare_data

    cfg = load_run_config(args.run)
    if args.data:
        cfg.data.root = args.data
    data_copy = resolve_copy(args.data_copy, cfg.data.root is None)  # before data is read
    data = prepare_data(cfg, splits=("train", "val"))
    path = record_run(args.run, args.into, data, command=args.command_line,
                      data_encoding=args.data_encoding, data_name=args.data_name,
                      data_copy=data_copy)
    print(f"wrote the record of {args.run} to {path}")
    return 0


def _cmd_stamp(args) -> int:
    from koa_core.experiments.datacopy import stamp_records

    done = stamp_records(args.records, args.data)
    copies = sorted({c for _, c in done})
    print(f"stamped {len(done)} record(s): data.copy {', '.join(copies)}")
    return 0


def _cmd_ablation(args) -> int:
    from koa_core.experiments.ablation import ablation_table, format_ablation, to_json

    t = ablation_table(args.records)
    print(to_json(t) if args.json else format_ablation(t))
    return 0


def _cmd_levers(args) -> int:
    from koa_core.experiments.ablation import to_json
    from koa_core.experiments.recipe import format_levers, levers_table

    t = levers_table(args.records, n_boot=args.n_boot)
    print(to_json(t) if args.json else format_levers(t))
    return 0


def _cmd_select(args) -> int:
    from koa_core.experiments.campaign import select_run

    s = select_run(args.records, min_recall=args.min_recall, group=args.group)
    if args.json:
        print(json.dumps(s, indent=1))
    else:
        m = s["metrics"]
        print(f"{s['name']}: val macro F1 {m['macro_f1']:.4f}, accuracy {m['accuracy']:.4f}, "
              f"lowest grade recall {s['min_recall']:.3f} ({s['eligible']} of {s['records']} "
              f"runs eligible; rule: {s['rule']})")
    return 0


def _add_data_provenance(p) -> None:
    """The options that name the data copy in a result record."""
    p.add_argument("--data-encoding", default="as stored",
                   help="how the data copy was encoded, for the records (e.g. 'train WebP q90')")
    p.add_argument("--data-name", default=None, help="the dataset's name, for the records")
    p.add_argument("--data-copy", default=None, type=_data_copy, metavar="COPY",
                   help="required with a data root: which copy of the images it holds, "
                   "'original' (as published) or 'clahe-CLIP-TxT' (enhanced upstream, e.g. "
                   "clahe-5.0-8x8); the phantom names itself")


def _data_copy(text: str) -> str:
    from koa_core.experiments.copies import parse_copy

    try:
        return parse_copy(text)
    except KoaError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_sizing(p) -> None:
    """``koa campaign``'s sizing options (koa_core.experiments.sizing)."""
    p.add_argument("--size", metavar="FILE", help="with --time-limit: first time a short "
                   "probe of the plan's first dual- and single-stream run, print seconds per "
                   "run and which runs fit (a prefix of the plan), write that to FILE (JSON), "
                   "then train only those")
    p.add_argument("--size-only", action="store_true", help="with --size: size, train nothing")
    p.add_argument("--epoch-s", type=float, metavar="S", help="with --size: seconds per "
                   "epoch of a dual-stream model, given instead of the probe")
    p.add_argument("--single-epoch-s", type=float, metavar="S", help="with --epoch-s: of a "
                   "single-stream model (default: --epoch-s / 1.8)")
    p.add_argument("--overhead-s", type=float, metavar="S", help="with --epoch-s: seconds "
                   "per run besides its epochs (default 0)")


def add_campaign_commands(sub) -> None:
    p = sub.add_parser("campaign", help="train a plan's configurations x seeds in one process, "
                       "one record per run; finished runs are skipped")
    p.add_argument("plan", help="plan YAML, or a bundled plan name (table5)")
    p.add_argument("--data", help="dataset root (default: the profile's, else the phantom)")
    p.add_argument("--runs", required=True, help="folder for the run folders (checkpoints)")
    p.add_argument("--records", required=True, help="folder for the runs' records")
    p.add_argument("--time-limit", type=float, default=None, metavar="SECONDS",
                   help="start no epoch that would end later; the run in progress is dropped")
    _add_data_provenance(p)
    p.add_argument("--only", action="append", metavar="NAME",
                   help="only these runs (NAME or NAME-sSEED; repeatable)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a setting of every run, after the plan's (repeatable)")
    p.add_argument("--progress", action="store_true", help="progress bars and epoch lines")
    _add_sizing(p)
    p.set_defaults(func=_cmd_campaign)

    p = sub.add_parser("record", help="write the record of a finished koa train run "
                       "(config, history, selected epoch, validation predictions, provenance)")
    p.add_argument("run", help="run folder written by koa train")
    p.add_argument("--into", required=True, help="the record's folder, e.g. results/mine/NAME")
    p.add_argument("--data", help="dataset root (default: the run's data.root)")
    _add_data_provenance(p)
    p.set_defaults(func=_cmd_record)

    p = sub.add_parser("stamp", help="name the data copy of records made before data.copy: "
                       "their validation views are rebuilt from ROOT as stored and through "
                       "CLAHE clip 5.0, 8x8, and the one whose digest matches is written")
    p.add_argument("records", nargs="+", help="folders of records (every record under them)")
    p.add_argument("--data", required=True, help="dataset root holding the original images")
    p.set_defaults(func=_cmd_stamp)

    p = sub.add_parser("ablation", help="Table 5 from records: mean ± sd over seeds, the "
                       "epoch choice beside the last epoch, the paper's steps as seed-paired "
                       "differences with seed-aware intervals and the scorecard's words")
    p.add_argument("records", help="folder of records (koa campaign --records)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_ablation)

    p = sub.add_parser("levers", help="beyond the paper: each lever of the from-scratch "
                       "recipe against Table 5's proposed runs, post-hoc levers (flip TTA, "
                       "expected grade, seed ensemble), the goals and calibration")
    p.add_argument("records", nargs="+", help="folders of records (the table5 and recipe "
                   "campaigns')")
    p.add_argument("--n-boot", type=_positive_int, default=2000,
                   help="bootstrap resamples for the goals' intervals and the post-hoc "
                   "levers' QWK and MAE differences")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_levers)

    p = sub.add_parser("select", help="the record to ship: best validation macro F1 among "
                       "runs whose every grade has recall >= --min-recall")
    p.add_argument("records", help="folder of records")
    p.add_argument("--min-recall", type=float, default=0.3)
    p.add_argument("--group", metavar="NAME", help="only the runs of one plan row: records "
                   "named NAME-sSEED (e.g. proposed)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_select)


# ---------------------------------------------------------------- parser and main
def build_parser() -> argparse.ArgumentParser:
    """The full ``koa`` parser (tests build and inspect it)."""
    parser = _Parser(prog="koa", description="Knee osteoarthritis KL grading: dual-stream "
                     "ResNet-18 with cross-attention (data, training, evaluation, prediction).")
    parser.add_argument("--version", action="version", version=f"koa_core {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    add_data_commands(sub)
    add_model_commands(sub)
    add_bench_command(sub)
    add_export_command(sub)
    add_pretrain_command(sub)
    add_runs_command(sub)
    add_campaign_commands(sub)
    add_book_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: run a subcommand; user errors become one line and exit 2."""
    try:
        argv = sys.argv[1:] if argv is None else list(argv)
        args = build_parser().parse_args(argv)
        args.command_line = shlex.join(["koa", *argv])  # recorded in result records
        return int(args.func(args) or 0)
    except KoaError as exc:  # control characters of a file name escaped: one line, always
        print(f"koa: error: {printable(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("koa: error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `koa data stats ROOT --json | head` (before OSError,
        return 0  # its base class)
    except OSError as exc:  # e.g. an output path under a file, a full disk
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"koa: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
