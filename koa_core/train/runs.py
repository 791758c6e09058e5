"""Run folders (``koa runs``): reading them back, and the selected epoch's figures.

A run folder written by :func:`koa_core.train.engine.fit` holds ``config.yaml`` (the resolved
config), ``history.csv`` (one row per epoch) and ``best.json`` (the sidecar of the
checkpoint chosen on validation). :func:`read_run` is the one reader of those files (the
engine, export, records and the book use it); :func:`summarize_run` makes one row per
run, for the ablation table of paper §3 (Table 5) and for comparing runs on throughput
(images/s, GPU utilisation, time waiting for data).
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

from koa_core.errors import KoaError

__all__ = ["format_runs", "read_run", "summarize_run"]

CONFIG, HISTORY, BEST = "config.yaml", "history.csv", "best.json"


def read_run(run_dir: str | Path, need: tuple[str, ...] = ()) -> dict:
    """``{"config": dict | None, "history": [row dicts], "best": sidecar | None}`` of a run
    folder; a part that is missing is None (history: empty). ``need`` names parts
    (``"config"``, ``"history"``, ``"best"``) whose absence or corruption is an error."""
    import yaml

    run = Path(run_dir)
    out: dict = {"config": None, "history": [], "best": None}
    problems = []
    for key, name in (("config", CONFIG), ("history", HISTORY), ("best", BEST)):
        path = run / name
        try:
            if key == "config":
                out[key] = yaml.safe_load(path.read_text()) or {}
            elif key == "history":
                with open(path, newline="") as fh:
                    out[key] = list(csv.DictReader(fh))
            else:
                out[key] = json.loads(path.read_text())
        except FileNotFoundError:
            if key in need:
                problems.append(f"no {name}")
        except (OSError, ValueError, yaml.YAMLError) as exc:
            problems.append(f"{name} unreadable ({str(exc).splitlines()[0][:80]})")
    if problems and (set(need) or any("unreadable" in p for p in problems)):
        raise KoaError(f"{run}: not a finished run folder ({'; '.join(problems)})")
    return out


def _floats(rows: list[dict], key: str) -> list[float]:
    out = []
    for r in rows:
        try:
            v = float(r.get(key, "nan"))
        except ValueError:
            continue
        if math.isfinite(v):
            out.append(v)
    return out


def summarize_run(run_dir: str | Path) -> dict:
    """One run's selected epoch, its validation figures and its throughput."""
    run = Path(run_dir)
    r = read_run(run, need=("history", "best"))
    side, hist = r["best"], r["history"]
    metric = side.get("select_metric", "macro_f1")
    best = next((r for r in hist if int(r["epoch"]) == int(side["epoch"])), None)
    if best is None:
        raise KoaError(f"{run}: best.json names epoch {side['epoch']}, absent from history.csv")
    later = hist[1:] or hist  # the first epoch pays for worker start-up and autotuning
    util = _floats(later, "gpu_util")
    return {
        "run": run.name,
        "epochs": len(hist),
        "selected": int(side["epoch"]),
        "select_metric": metric,
        "val_accuracy": float(best["val_accuracy"]),
        "val_macro_f1": float(best["val_macro_f1"]),
        "val_qwk": float(best["val_qwk"]),
        "val_mae": float(best["val_mae"]),
        "val_kl4_recall": float(best["val_kl4_recall"]),
        "train_seconds": sum(_floats(hist, "epoch_s")),
        "train_img_s": statistics.median(_floats(later, "train_img_s") or [math.nan]),
        "data_wait_s": statistics.median(_floats(later, "data_wait_s") or [math.nan]),
        "gpu_util": statistics.median(util) if util else None,
        "hardware": side.get("hardware", ""),
    }


def format_runs(rows: list[dict]) -> str:
    """A plain-text table of :func:`summarize_run` rows."""
    head = (f"{'run':<16}{'epochs':>7}{'best':>6}{'val acc':>9}{'macro F1':>10}{'QWK':>8}"
            f"{'MAE':>7}{'KL4 rec':>9}{'train s':>9}{'img/s':>8}{'wait s':>8}{'GPU %':>7}")
    lines = [head]
    for r in rows:
        util = f"{r['gpu_util']:.0f}" if r["gpu_util"] is not None else "-"
        lines.append(f"{r['run']:<16}{r['epochs']:>7}{r['selected']:>6}"
                     f"{r['val_accuracy']:>9.3f}{r['val_macro_f1']:>10.3f}{r['val_qwk']:>8.3f}"
                     f"{r['val_mae']:>7.3f}{r['val_kl4_recall']:>9.3f}{r['train_seconds']:>9.0f}"
                     f"{r['train_img_s']:>8.0f}{r['data_wait_s']:>8.2f}{util:>7}")
    hardware = sorted({r["hardware"] for r in rows if r["hardware"]})
    if hardware:
        lines.append("hardware: " + "; ".join(hardware))
    lines.append("figures of the epoch selected on validation; img/s, wait (per epoch) and GPU % "
                 "are medians over epochs 2+")
    return "\n".join(lines)
