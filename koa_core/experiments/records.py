"""Result records: the small, committed text outputs of a training run (paper §3).

A record is a folder written by the project's own commands (``koa record``, ``koa
campaign``), never by hand:

* ``config.yaml`` - the run's resolved config;
* ``history.csv`` - one row per epoch (losses, validation figures, images/s, data wait);
* ``selected.json`` - the epoch chosen on validation and its metrics with bootstrap CIs,
  recomputed from the predictions below;
* ``val_predictions.csv`` - one row per validation knee: path relative to the data root,
  true and predicted grade, the five probabilities and the fusion gate;
* ``provenance.json`` - written last: code commit, exact command, machine, software
  versions, data copy and its encoding, wall time, images/s, and the SHA-256 of every
  other file. A record without it, or whose files do not match it, is incomplete.

``data.copy`` names the copy of the images the run trained and was validated on
(:mod:`koa_core.experiments.datacopy`: ``original``, ``clahe-5.0-8x8 (enhanced upstream)``, ...):
:func:`write_record` refuses a provenance without it, and :func:`check_record` reports a
record that lacks it. Records written before it existed stay readable
(:func:`read_record`) until ``koa stamp`` names their copy, verified against their
validation pixels (``data.copy_evidence`` says how); :func:`stamp_copy` writes it.

:func:`check_record` is what tests, campaigns (to skip finished runs) and the book use to
trust a record; :func:`read_record` is the one reader of records.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np

from koa_core.errors import KoaError
from koa_core.experiments.copies import parse_copy
from koa_core.files import atomic_write_text
from koa_core.locking import FolderLock
from koa_core.metrics.classification import classification_metrics
from koa_core.model.checkpoint import sha256_file
from koa_core.train.runs import CONFIG, HISTORY, read_run

__all__ = ["RECORD_FILES", "check_record", "find_records", "predictions_table",
           "read_record", "record_copy", "run_name", "split_run_name", "stamp_copy",
           "write_record"]

RECORD_FORMAT = "koa_core-record-1"
RECORD_FILES = ("config.yaml", "history.csv", "selected.json", "val_predictions.csv")
_RUN_NAME = re.compile(r"(.*)-s(\d+)")


def run_name(group: str, seed: int) -> str:
    """A run's (and its record's) name: its plan row and seed, ``NAME-sSEED``."""
    return f"{group}-s{seed}"


def split_run_name(name: str) -> tuple[str, int | None]:
    """The plan row and seed of a run named ``NAME-sSEED``; a name without a seed is all
    row (seed None)."""
    m = _RUN_NAME.fullmatch(name)
    return (m.group(1), int(m.group(2))) if m else (name, None)
PROVENANCE = "provenance.json"
PROVENANCE_KEYS = ("format", "name", "commit", "command", "machine", "data", "wall_s",
                   "train_img_s", "created", "files")
PRED_FIELDS = ["path", "patient", "knee", "grade", "pred", "p0", "p1", "p2", "p3", "p4",
               "gate_raw", "gate_clahe"]
TTA_FIELDS = [f"t{g}" for g in range(5)]  # optional: probabilities with test-time flip


def predictions_table(records, probs: np.ndarray, gates: np.ndarray | None,
                      root: str | Path | None, probs_flip: np.ndarray | None = None,
                      ) -> list[dict]:
    """One row per knee (``PRED_FIELDS``); paths relative to ``root`` where possible.
    ``probs_flip``: the same model's probabilities with test-time flip (columns
    ``t0..t4``, :data:`TTA_FIELDS`), kept so TTA is measured without the weights."""
    rows = []
    for i, r in enumerate(records):
        path = Path(r.path)
        if root is not None:
            try:
                path = path.resolve().relative_to(Path(root).resolve())
            except ValueError:
                pass
        rows.append({
            "path": path.as_posix(), "patient": r.patient or "", "knee": r.side or "",
            "grade": int(r.grade), "pred": int(np.argmax(probs[i])),
            **{f"p{g}": f"{probs[i, g]:.6f}" for g in range(5)},
            "gate_raw": "" if gates is None else f"{gates[i, 0]:.6f}",
            "gate_clahe": "" if gates is None else f"{gates[i, 1]:.6f}",
            **({f"t{g}": f"{probs_flip[i, g]:.6f}" for g in range(5)}
               if probs_flip is not None else {}),
        })
    return rows


def write_record(into: str | Path, run_dir: str | Path, rows: list[dict],
                 provenance: dict, n_boot: int = 1000) -> Path:
    """Write the record of ``run_dir`` (a finished :func:`~koa_core.train.engine.fit` folder)
    into ``into`` from the selected checkpoint's validation predictions ``rows``
    (:func:`predictions_table`). ``provenance`` needs ``name``, ``command``, ``commit``,
    ``machine``, ``data``, ``wall_s``, ``train_img_s``; the file hashes are added here."""
    into = Path(into)
    with FolderLock(into.parent, "writing records"):
        tmp = into.with_name(f".{into.name}.{os.getpid()}.tmp")
        try:
            return _write_record(into, run_dir, rows, provenance, n_boot)
        except OSError as exc:  # e.g. a full disk: the previous record stays as it was
            shutil.rmtree(tmp, ignore_errors=True)
            raise KoaError(f"record {into}: could not be written ({exc.strerror or exc}); "
                           "the previous record, if any, is intact") from None


def _write_record(into, run_dir, rows, provenance, n_boot) -> Path:
    run, into = Path(run_dir), Path(into)
    side = read_run(run, need=("config", "history", "best"))["best"]
    tmp = into.with_name(f".{into.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in (CONFIG, HISTORY):
        shutil.copyfile(run / name, tmp / name)
    with open(tmp / "val_predictions.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=PRED_FIELDS + (TTA_FIELDS if rows and "t0" in rows[0]
                                                         else []))
        w.writeheader()
        w.writerows(rows)
    y = np.array([int(r["grade"]) for r in rows])
    p = np.array([int(r["pred"]) for r in rows])
    selected = {"epoch": int(side["epoch"]), "select_metric": side.get("select_metric"),
                "split": "val",
                "val_metrics": classification_metrics(y, p, n_boot=n_boot, seed=0)}
    (tmp / "selected.json").write_text(json.dumps(selected, indent=1) + "\n")
    prov = {"format": RECORD_FORMAT, **provenance,
            "created": provenance.get("created") or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "files": {name: sha256_file(tmp / name) for name in RECORD_FILES}}
    missing = [k for k in PROVENANCE_KEYS if prov.get(k) in (None, "")]
    if not missing and not (prov["data"] or {}).get("copy"):
        missing = ["data.copy (which copy of the images the run saw)"]
    if missing:
        shutil.rmtree(tmp, ignore_errors=True)
        raise KoaError(f"record {into.name}: provenance lacks {', '.join(missing)}")
    try:
        prov["data"] = {**prov["data"], "copy": parse_copy(prov["data"]["copy"])}
    except KoaError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise KoaError(f"record {into.name}: {exc}") from None
    atomic_write_text(tmp / PROVENANCE, json.dumps(prov, indent=1, default=str) + "\n")
    # the complete new record takes the old one's place; the old one is removed after
    old = into.with_name(f".{into.name}.{os.getpid()}.old")
    if into.exists():
        os.replace(into, old)
    os.replace(tmp, into)
    shutil.rmtree(old, ignore_errors=True)
    return into


def _read_predictions(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def check_record(path: str | Path, require_copy: bool = True) -> list[str]:
    """Problems of the record at ``path`` (empty = complete and self-consistent): every
    file present and matching its hash, provenance complete (``data.copy`` included unless
    ``require_copy`` is false: a record from before it), the selected epoch in the
    history, the predictions consistent (pred = argmax of the probabilities, which sum to
    1) and the stored metrics recomputed from them."""
    rec = Path(path)
    prov_path = rec / PROVENANCE
    if not prov_path.exists():
        return [f"{rec}: no {PROVENANCE} (incomplete record)"]
    try:
        prov = json.loads(prov_path.read_text())
    except ValueError as exc:
        return [f"{prov_path}: not JSON ({exc})"]
    problems = [f"{prov_path}: missing {k}" for k in PROVENANCE_KEYS
                if prov.get(k) in (None, "", {})]
    for k in ("hardware",):
        if not (prov.get("machine") or {}).get(k):
            problems.append(f"{prov_path}: machine.{k} missing")
    if not (prov.get("data") or {}).get("encoding"):
        problems.append(f"{prov_path}: data.encoding missing")
    if require_copy and isinstance(prov.get("data"), dict) and not prov["data"].get("copy"):
        problems.append(f"{prov_path}: data.copy missing (a record from before it: "
                        "`koa stamp` names the copy, checked against its validation views)")
    for name in RECORD_FILES:
        f = rec / name
        if not f.exists():
            problems.append(f"{f}: missing")
        elif (prov.get("files") or {}).get(name) != sha256_file(f):
            problems.append(f"{f}: does not match the hash in {PROVENANCE}")
    if problems:
        return problems
    sel = json.loads((rec / "selected.json").read_text())
    with open(rec / "history.csv", newline="") as fh:
        epochs = [int(r["epoch"]) for r in csv.DictReader(fh)]
    if sel["epoch"] not in epochs:
        problems.append(f"{rec}: selected epoch {sel['epoch']} is not in history.csv")
    rows = _read_predictions(rec / "val_predictions.csv")
    if not rows:
        return problems + [f"{rec}: no predictions"]
    probs = np.array([[float(r[f"p{g}"]) for g in range(5)] for r in rows])
    y = np.array([int(r["grade"]) for r in rows])
    pred = np.array([int(r["pred"]) for r in rows])
    if np.abs(probs.sum(1) - 1).max() > 1e-4:
        problems.append(f"{rec}: probabilities do not sum to 1")
    top = probs.max(1)
    clear = (top - np.sort(probs, 1)[:, -2]) > 2e-6  # rounding may tie near-equal classes
    if (probs.argmax(1) != pred)[clear].any():
        problems.append(f"{rec}: pred is not the most probable grade")
    m = classification_metrics(y, pred, n_boot=0)
    stored = sel["val_metrics"]
    if stored.get("n") != len(rows):
        problems.append(f"{rec}: selected.json n={stored.get('n')} but {len(rows)} predictions")
    for key in ("accuracy", "macro_f1", "weighted_f1", "qwk", "mae"):
        if not np.isclose(stored.get(key, np.nan), m[key], atol=1e-9):
            problems.append(f"{rec}: {key} {stored.get(key)} does not recompute "
                            f"({m[key]}) from the predictions")
    if stored.get("confusion_matrix") != m["confusion_matrix"]:
        problems.append(f"{rec}: the confusion matrix does not recompute from the predictions")
    return problems


def read_record(path: str | Path, verify: bool = True) -> dict:
    """A record as a dict: ``name``, ``config`` (YAML text parsed), ``history`` (rows),
    ``selected``, ``provenance`` and ``predictions`` (arrays ``grade``, ``pred``,
    ``probs``, ``gate_raw``, ``probs_flip`` (None in records without TTA columns), list
    ``path``). ``verify`` refuses an incomplete record; one that only lacks ``data.copy``
    (written before it existed) is read, its copy unknown (:func:`record_copy`)."""
    import yaml

    rec = Path(path)
    if verify:
        problems = check_record(rec, require_copy=False)
        if problems:
            raise KoaError(problems[0] + (f" (+{len(problems) - 1} more)"
                                          if len(problems) > 1 else ""))
    rows = _read_predictions(rec / "val_predictions.csv")
    with open(rec / "history.csv", newline="") as fh:
        history = list(csv.DictReader(fh))
    gate = [r.get("gate_raw", "") for r in rows]
    return {
        "name": rec.name,
        "config": yaml.safe_load((rec / "config.yaml").read_text()),
        "history": history,
        "selected": json.loads((rec / "selected.json").read_text()),
        "provenance": json.loads((rec / PROVENANCE).read_text()),
        "predictions": {
            "path": [r["path"] for r in rows],
            "patient": [r.get("patient", "") for r in rows],
            "grade": np.array([int(r["grade"]) for r in rows]),
            "pred": np.array([int(r["pred"]) for r in rows]),
            "probs": np.array([[float(r[f"p{g}"]) for g in range(5)] for r in rows]),
            "gate_raw": (np.array([float(g) for g in gate]) if all(gate) else None),
            "probs_flip": (np.array([[float(r[f"t{g}"]) for g in range(5)] for r in rows])
                           if rows and _has_tta(rows) else None),
        },
    }


def record_copy(provenance: dict) -> str | None:
    """The data copy a record's provenance names (``data.copy``), or None before it."""
    return (provenance.get("data") or {}).get("copy") or None


def stamp_copy(path: str | Path, copy: str, evidence: str) -> Path:
    """Write ``data.copy`` and ``data.copy_evidence`` into the provenance of the record at
    ``path`` (atomically: the old file stays whole until the new one replaces it). The
    other files and their hashes are untouched; the caller has verified the copy."""
    rec = Path(path)
    prov_path = rec / PROVENANCE
    with FolderLock(rec.parent, "writing records"):
        try:
            prov = json.loads(prov_path.read_text())
        except (OSError, ValueError) as exc:
            raise KoaError(f"{prov_path}: not readable ({exc})") from None
        data = dict(prov.get("data") or {})
        rest = {k: v for k, v in data.items() if k not in ("name", "copy", "copy_evidence")}
        prov["data"] = {**({"name": data["name"]} if "name" in data else {}),
                        "copy": copy, "copy_evidence": evidence, **rest}
        atomic_write_text(prov_path, json.dumps(prov, indent=1, default=str) + "\n")
    return prov_path


def _has_tta(rows: list[dict]) -> bool:
    return all(r.get("t0") not in (None, "") for r in rows)


def find_records(root: str | Path) -> list[Path]:
    """Record folders under ``root`` (those holding a ``provenance.json``), sorted."""
    root = Path(root)
    return sorted(p.parent for p in root.rglob(PROVENANCE) if not p.parent.name.startswith("."))
