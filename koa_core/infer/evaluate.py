"""Evaluation of a checkpoint on a split, and prediction on single images (paper §3.1).

:func:`evaluate_checkpoint` reproduces the paper's Tables 3-4 and Figs. 5-6 for any split
of a dataset root - accuracy, macro/weighted F1, per-grade precision/recall/F1, the
confusion matrix - plus quadratic weighted kappa, mean absolute grade error and 95%
bootstrap intervals; it runs on any backend of :mod:`koa_core.infer.backends` (torch, ONNX
Runtime). Grading individual files and folders lives in :mod:`koa_core.infer.predict`. Both
rebuild preprocessing from the checkpoint's sidecar, so the pixels match training.

:func:`calibrate_checkpoint` (``koa calibrate``, beyond the paper) fits a temperature on the
validation knees and stores it in the sidecar, with the calibration it buys (NLL, ECE,
and both again cross-fitted over patients so the figure is not judged on its own fit), and
the conformal threshold(s) of sets of grades with a stated coverage
(:mod:`koa_core.metrics.conformal`) on the temperature-scaled probabilities. It refuses too
few knees, and a temperature that would worsen the ECE even on its own knees.
:func:`evaluate_checkpoint` reports a calibrated checkpoint's sets (coverage, set size).
"""

from __future__ import annotations

import csv
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from koa_core.data.cache import ViewCache
from koa_core.data.index import discover
from koa_core.data.preprocess import Preprocessor
from koa_core.errors import KoaError
from koa_core.files import atomic_open, atomic_write_text, check_writable
from koa_core.infer.backends import load_backend
from koa_core.metrics.calibration import apply_temperature, calibration_report, ece, nll
from koa_core.metrics.classification import classification_metrics
from koa_core.metrics.conformal import (
    Conformal,
    fit_conformal,
    least_knees,
    set_report,
    set_stats,
    too_few,
)
from koa_core.model.checkpoint import resolve_checkpoint, sidecar_path, update_sidecar
from koa_core.model.inference import check_tta
from koa_core.runtime import provenance

__all__ = [
    "EvalOptions",
    "SetOptions",
    "calibrate_checkpoint",
    "evaluate_checkpoint",
]

# koa calibrate's least validation set: the cross-fit halves need two patients, a
# temperature fitted on a handful of knees of one grade says nothing
MIN_CALIBRATION_KNEES = 5


@dataclass
class EvalOptions:
    """How :func:`evaluate_checkpoint` evaluates (``koa evaluate``'s options, its defaults)."""

    out: str | Path | None = None  # metrics JSON
    predictions: str | Path | None = None  # per-image CSV
    batch_size: int = 64
    n_boot: int = 1000  # bootstrap resamples of the intervals
    cache_dir: str | None = None
    allow_leakage: bool = False
    device: str | None = None
    progress: bool = False
    tta: str | None = None  # "flip": each knee averaged with its mirror
    ensemble: list[str | Path] | None = None  # more checkpoints averaged with this one
    engine: str = "torch"
    calibrated: bool = True  # apply each checkpoint's fitted temperature, if any


def evaluate_checkpoint(checkpoint: str | Path | None, root: str | Path, split: str = "test",
                        options: EvalOptions | None = None, **settings) -> dict:
    """Metrics of a checkpoint on one split; optionally writes metrics JSON and a CSV.
    ``options`` (or its fields as keywords, ``settings``): :class:`EvalOptions`.

    ``tta="flip"``: each knee's probabilities averaged with its mirror's. ``ensemble``:
    more checkpoints whose probabilities (and gates, where every member has one) are
    averaged with this one's, each fed the views its own sidecar prescribes. ``engine``:
    torch, onnxruntime or onnxruntime-int8 (:func:`koa_core.infer.backends.load_backend`).
    ``calibrated``: apply each checkpoint's fitted temperature (``koa calibrate``), if any.
    A single checkpoint's grades are the same either way; an ensemble averages the scaled
    probabilities, so its grades may differ."""
    o = dataclasses.replace(options or EvalOptions(), **settings)
    check_tta(o.tta)
    ckpt = resolve_checkpoint(checkpoint)
    members = [load_backend(c, o.engine, o.device, o.cache_dir)
               for c in [ckpt] + [resolve_checkpoint(e) for e in o.ensemble or []]]
    for member in members:
        member.calibrated = o.calibrated
    side = members[0].sidecar
    for target in (o.out, o.predictions):
        if target is not None:
            check_writable(target)
    records = _split_records(root, split, o.allow_leakage)
    all_probs, all_gates = [], []
    for member in members:
        p, g = _member_predict(member, records, root, o.cache_dir, o.progress, o.batch_size, o.tta)
        all_probs.append(p)
        all_gates.append(g)
    probs = np.mean(all_probs, axis=0)
    gates = (np.mean(all_gates, axis=0) if all(g is not None for g in all_gates) else None)
    y_true = np.array([r.grade for r in records])
    y_pred = probs.argmax(1)
    metrics = classification_metrics(y_true, y_pred, n_boot=o.n_boot)
    metrics.update({"split": split, "checkpoint": str(ckpt), "data_root": str(root),
                    "model": side.get("config", {}).get("model", {}),
                    "precision": members[0].precision, "engine": members[0].engine,
                    "weights_dtype": side.get("weights_dtype"),
                    "input_transform": Preprocessor.from_sidecar(side).describe_input(),
                    "tta": o.tta if o.tta and o.tta != "none" else None,
                    "temperatures": [m.temperature for m in members],
                    "ensemble": ([str(m.checkpoint) for m in members] if len(members) > 1
                                 else None),
                    **provenance(device=getattr(members[0], "device", torch.device("cpu")))})
    if side.get("conformal") and len(members) == 1 and o.calibrated and not metrics["tta"]:
        # the sets hold for probabilities made as at calibration: one model, its temperature
        metrics["conformal"] = set_report(Conformal.from_dict(side["conformal"]), probs, y_true)
    if gates is not None:
        metrics["gate_raw_mean_by_grade"] = {
            str(g): float(gates[y_true == g, 0].mean()) for g in range(5) if (y_true == g).any()}
    if o.out is not None:
        atomic_write_text(o.out, json.dumps(metrics, indent=2) + "\n")
    if o.predictions is not None:
        with atomic_open(o.predictions, newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["path", "true_grade", "pred_grade"] + [f"p{g}" for g in range(5)]
                       + (["gate_raw"] if gates is not None else []))
            for i, r in enumerate(records):
                w.writerow([r.path, r.grade, int(y_pred[i])]
                           + [f"{p:.6f}" for p in probs[i]]
                           + ([f"{gates[i, 0]:.6f}"] if gates is not None else []))
    return metrics


def _split_records(root, split: str, allow_leakage: bool):
    index = discover(root)
    index.require_no_leakage(allow_leakage)
    records = index.split(split)
    if not records:
        raise KoaError(f"{root}: no images in the {split!r} split "
                       f"(splits present: {', '.join(index.counts()) or 'none'})")
    return records


def _member_predict(member, records, root, cache_dir, progress, batch_size, tta=None):
    views = ViewCache(cache_dir).get(records, Preprocessor.from_sidecar(member.sidecar),
                                     root=str(root), progress=progress, mapped=False)
    return member.predict(views, batch_size, tta=tta)


@dataclass(frozen=True)
class SetOptions:
    """The conformal sets ``koa calibrate`` fits beside the temperature."""

    coverage: float = 0.90  # ours: the share of knees whose set holds the true grade
    method: str = "ordinal"  # ours: runs of neighbouring grades (metrics.conformal)
    class_conditional: bool = False  # ours: one threshold per true grade

    def __post_init__(self) -> None:
        least_knees(self.coverage)  # a coverage outside (0, 1): refused before any grading


def calibrate_checkpoint(checkpoint: str | Path, root: str | Path,
                         options: EvalOptions | None = None, command: str | None = None,
                         sets: SetOptions | None = None, **settings) -> dict:
    """Fit the temperature of ``checkpoint`` on the validation split of ``root`` and store
    it in the checkpoint's sidecar (``calibration``); returns what was stored. ``options``
    (or its fields as keywords): the :class:`EvalOptions` that apply (batch size, cache,
    leakage, device, progress, engine); ``command``: for the provenance.

    The conformal sets (``sets``: :class:`SetOptions`) are fitted on the same knees'
    temperature-scaled probabilities and stored as ``conformal``, with the coverage and set
    sizes they reach there. The fit starts from the plain softmax, so calibrating again
    replaces the temperature instead of stacking a second one. The test split is never
    read. Too few validation knees (:data:`MIN_CALIBRATION_KNEES`, of two patients and two
    grades at least), or a temperature that would worsen the ECE on the very knees it was
    fitted on, is refused in one line and the sidecar is left as it was."""
    o = dataclasses.replace(options or EvalOptions(), **settings)
    ckpt = Path(checkpoint)
    if ckpt.suffix.lower() != ".safetensors":
        raise KoaError(f"{ckpt}: calibrate the .safetensors checkpoint (its sidecar keeps the "
                       "temperature, and an ONNX export made from it afterwards carries it)")
    member = load_backend(ckpt, o.engine, o.device, o.cache_dir)
    member.calibrated = False
    records = _split_records(root, "val", o.allow_leakage)
    _check_calibration_set(records, root)
    probs, _ = _member_predict(member, records, root, o.cache_dir, o.progress, o.batch_size)
    calibration = _fit_calibration(probs, records, ckpt)
    made = {"engine": member.engine, "precision": member.precision,
            **provenance(command, device=getattr(member, "device", torch.device("cpu")))}
    calibration.update(made)
    scaled = apply_temperature(probs, calibration["temperature"])
    y = np.array([r.grade for r in records])
    conformal, skipped = _fit_sets(scaled, y, sets or SetOptions(), made)
    # too few knees for sets: none stored (an earlier calibration's are removed)
    update_sidecar(ckpt, {"calibration": calibration, "conformal": conformal})
    return {**calibration, "conformal": conformal, "conformal_skipped": skipped}


def _fit_sets(scaled: np.ndarray, y: np.ndarray, s: SetOptions, made: dict
              ) -> tuple[dict | None, str | None]:
    """The sidecar's ``conformal`` entry, or None and why not (too few knees)."""
    short = too_few(y, s.coverage, s.class_conditional, scaled.shape[1])
    if short:
        return None, short
    conf = fit_conformal(scaled, y, s.coverage, s.method, s.class_conditional)
    return {**conf.to_dict(), "split": "val", "measured": set_stats(conf.sets(scaled), y),
            **made}, None


def _check_calibration_set(records, root) -> None:
    patients = {r.patient or r.path for r in records}
    grades = {r.grade for r in records}
    if (len(records) < MIN_CALIBRATION_KNEES or len(patients) < 2 or len(grades) < 2):
        raise KoaError(f"{root}: koa calibrate needs at least {MIN_CALIBRATION_KNEES} "
                       "validation knees, of at least 2 patients and 2 grades "
                       f"({len(records)} knee(s) of {len(patients)} patient(s), "
                       f"{len(grades)} grade(s) found)")


def _fit_calibration(probs: np.ndarray, records, ckpt: Path) -> dict:
    """The temperature fitted on the validation knees and what it buys, or one line when
    it would make the ECE on those knees worse."""
    y = np.array([r.grade for r in records])
    report = calibration_report(probs, y, [r.patient or r.path for r in records])
    t = report["temperature_all"]
    scaled = apply_temperature(probs, t)
    before, after = report["before"]["ece"], ece(scaled, y)
    if after > before:
        raise KoaError(f"the fitted temperature {t:.3f} would worsen the expected calibration "
                       f"error on these {len(y)} validation knees (ECE {before:.4f} -> "
                       f"{after:.4f}); not stored, {sidecar_path(ckpt)} is unchanged")
    return {
        "temperature": t, "split": "val", "knees": int(len(y)),
        "nll": {"before": report["before"]["nll"], "after": nll(scaled, y)},
        "ece": {"before": before, "after": after},
        "cross_fitted": {"nll": report["after"]["nll"], "ece": report["after"]["ece"],
                         "fold_temperatures": report["fold_temperatures"],
                         "what": "each patient's knees scaled by a temperature fitted on "
                                 "the other half of the patients"}}
