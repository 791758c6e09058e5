"""Records as configurations × seeds, and what they say of how each run was trained (§3).

:func:`load_groups` reads the records under a folder into {configuration: {seed: run}},
each run its validation predictions and how it was trained (epochs planned and run,
early-stopping patience, the epoch chosen and on what, hardware, commit, data copy and
encoding, initialisation, seconds of training, the validation history). From these:

* :func:`deviations`: how a configuration's runs differ from the paper's (from scratch,
  seconds of training, epochs, early stopping, the copy, the encoding), listed beside a
  shortfall;
* :func:`confounders`: how two configurations' runs differ from each other, which makes a
  step between them say nothing about the component it is meant to isolate;
* :func:`selection_bias`: the chosen epoch's figures beside the last epoch's and the mean
  of the epochs around the chosen one, where the epoch was chosen on the validation knees
  that score it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from koa_core.experiments.records import find_records, read_record, record_copy, split_run_name
from koa_core.train.selection import LAST

__all__ = ["LAST", "SelectionBias", "confounders", "data_line", "deviations", "enhanced",
           "load_groups", "selection_bias"]

# epochs either side of the chosen one whose mean shows how far the choice lifted it # ours
NEIGHBOURS = 2


def enhanced(copy: str | None) -> bool:
    """Whether a data copy was enhanced upstream (not the originals, not the phantom)."""
    return copy not in (None, "original", "phantom")


def _run(rec: dict) -> dict:
    prov, cfg = rec["provenance"], rec["config"]
    train = cfg.get("train") or {}
    hist = {k: np.array([float(r[k]) if r.get(k) not in (None, "") else np.nan
                         for r in rec["history"]]) for k in ("val_accuracy", "val_macro_f1")}
    return {**rec["predictions"], "metrics": rec["selected"]["val_metrics"],
            "epoch": rec["selected"]["epoch"], "epochs_run": len(rec["history"]),
            "history": hist, "img_s": prov.get("train_img_s"), "wall_s": prov.get("wall_s"),
            "hardware": prov["machine"]["hardware"], "commit": prov["commit"],
            "copy": record_copy(prov), "encoding": prov["data"]["encoding"],
            "pretrained": str((cfg.get("model") or {}).get("pretrained")),
            "epochs_planned": train.get("epochs"), "patience": train.get("patience"),
            "select_metric": rec["selected"].get("select_metric", train.get("select_metric"))}


def load_groups(records_dir: str | Path) -> tuple[dict[str, dict[int, dict]], dict]:
    """The records under a folder as {configuration: {seed: run}} (the configuration and
    seed from the provenance, else from the name ``NAME-sSEED``), and {configuration:
    hardware, copy, encoding, commit, pretrained} of its first record."""
    groups: dict[str, dict[int, dict]] = {}
    meta: dict[str, dict] = {}
    for path in find_records(records_dir):
        rec = read_record(path)
        prov = rec["provenance"]
        named, named_seed = split_run_name(rec["name"])
        group = prov.get("group") or named
        seed = int(prov.get("seed") or (named_seed if named_seed is not None
                                         else rec["config"]["train"]["seed"]))
        run = groups.setdefault(group, {})[seed] = _run(rec)
        meta.setdefault(group, {k: run[k] for k in ("hardware", "copy", "encoding", "commit",
                                                    "pretrained")})
    return groups, meta


def _values(runs: dict[int, dict], key: str, seeds=None) -> list:
    return [runs[s].get(key) for s in (seeds if seeds is not None else sorted(runs))]


def _early_stopping(run: dict) -> bool:
    p, e = run.get("patience"), run.get("epochs_planned")
    return p is not None and e is not None and p < e and run.get("select_metric") != LAST


def deviations(runs: dict[int, dict]) -> tuple[str, ...]:
    """How a configuration's runs were trained unlike the paper's, from their records."""
    one = runs[min(runs)]
    out = []
    if one.get("copy") == "phantom":
        out.append("a synthetic phantom")
    if one.get("pretrained") in ("none", "None", "False", ""):
        out.append("from scratch (paper: ImageNet)")
    wall = [w for w in _values(runs, "wall_s") if w]
    if wall:
        out.append(f"~{np.median(wall):.0f} s of training")
    run = [e for e in _values(runs, "epochs_run") if e]
    if run:
        out.append(f"{'/'.join(map(str, run))} epochs")
    if any(_early_stopping(r) for r in runs.values()):
        out.append(f"early stopping (patience {one.get('patience')})")
    if any(r.get("select_metric") not in (None, LAST) for r in runs.values()):
        out.append("epoch chosen on these knees")
    if enhanced(one.get("copy")):
        out.append(f"{one['copy']} copy")
    if "lossy" in (one.get("encoding") or ""):
        out.append("lossy training images")
    return tuple(out)


_SAME = (("patience", "early-stopping patience"), ("epochs_planned", "epochs planned"),
         ("select_metric", "epoch chosen by"), ("hardware", "hardware"), ("commit", "commit"),
         ("copy", "data copy"), ("encoding", "encoding"), ("pretrained", "initialisation"))


def confounders(a: dict[int, dict], b: dict[int, dict]) -> tuple[str, ...]:
    """How the runs of two configurations were trained differently, over the seeds they
    share: epochs run (seed by seed), early stopping, hardware, commit, data copy,
    encoding, initialisation. Runs that are the same training (a post-hoc variant of its
    own records) have none."""
    seeds = sorted(set(a) & set(b))
    out = []
    ea, eb = _values(a, "epochs_run", seeds), _values(b, "epochs_run", seeds)
    if ea != eb and None not in ea + eb:
        out.append(f"epochs run ({'/'.join(map(str, ea))} against {'/'.join(map(str, eb))})")
    for key, label in _SAME:
        va, vb = set(_values(a, key, seeds)) - {None}, set(_values(b, key, seeds)) - {None}
        if va and vb and va != vb:
            def say(vs):
                return ", ".join(str(v)[:7] if key == "commit" else str(v) for v in sorted(vs))
            out.append(f"{label} ({say(va)} against {say(vb)})")
    return tuple(out)


@dataclass(frozen=True)
class SelectionBias:
    """A configuration's validation figures (means over seeds): at the chosen epoch, the
    mean of the epochs within ±``NEIGHBOURS`` of it (the chosen one left out), and at the
    last epoch. ``chosen_on_val``: the chosen epoch was picked on these knees."""

    config: str
    seeds: int
    chosen_epoch: tuple[int, ...]
    epochs_run: tuple[int, ...]
    chosen_on_val: bool
    accuracy: tuple[float, float, float]
    macro_f1: tuple[float, float, float]


def _around(h: np.ndarray, e: int) -> float:
    idx = [i for i in range(e - 1 - NEIGHBOURS, e + NEIGHBOURS) if 0 <= i < len(h) and i != e - 1]
    near = h[idx][np.isfinite(h[idx])]
    return float(near.mean()) if len(near) else float("nan")


def selection_bias(groups: dict[str, dict[int, dict]]) -> list[SelectionBias]:
    """:class:`SelectionBias` of every configuration whose records carry a history."""
    out = []
    for name, runs in groups.items():
        rs = [runs[s] for s in sorted(runs) if len(runs[s].get("history", {})
                                                   .get("val_accuracy", ())) > 0]
        if not rs:
            continue
        figs = {}
        for key in ("accuracy", "macro_f1"):
            h = [r["history"][f"val_{key}"] for r in rs]
            figs[key] = tuple(float(np.mean(v)) for v in zip(*[
                (x[r["epoch"] - 1], _around(x, r["epoch"]), x[-1]) for x, r in zip(h, rs)]))
        out.append(SelectionBias(name, len(rs), tuple(r["epoch"] for r in rs),
                                 tuple(r["epochs_run"] for r in rs),
                                 any(r.get("select_metric") != LAST for r in rs),
                                 figs["accuracy"], figs["macro_f1"]))
    return out


def data_line(rows) -> str:
    """The data the rows' records saw, in words: the copy (or copies) of the images and
    how they travelled, e.g. ``copy original; val: as stored; train: ...``."""
    rows = list(rows)
    copies = sorted({r.get("copy") or "not named (record from before data.copy)"
                     for r in rows})
    enc = sorted({r["encoding"] for r in rows})
    return f"{'copies' if len(copies) > 1 else 'copy'} {' + '.join(copies)}; {'; '.join(enc)}"
