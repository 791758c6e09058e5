"""Evaluation of a checkpoint on a split, and prediction on single images (paper §3.1).

:func:`evaluate_checkpoint` reproduces the paper's Tables 3-4 and Figs. 5-6 for any split
of a dataset root - accuracy, macro/weighted F1, per-grade precision/recall/F1, the
confusion matrix - plus quadratic weighted kappa, mean absolute grade error and 95%
bootstrap intervals. :func:`predict_files` grades individual images; a file that cannot
be read is reported and the others are still graded. Both rebuild preprocessing from the
checkpoint's sidecar, so the pixels match training.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import GRADE_NAMES
from .cache import ViewCache
from .checkpoint import load_checkpoint
from .data import discover
from .engine import amp_dtype, predict_views, resolve_device
from .runtime import provenance
from .errors import KoaError
from .metrics import classification_metrics
from .preprocess import Preprocessor

__all__ = [
    "DEFAULT_CHECKPOINT",
    "Prediction",
    "evaluate_checkpoint",
    "predict_files",
    "preprocessor_from_sidecar",
    "resolve_checkpoint",
]

# The shipped checkpoint (see README): used when no --checkpoint is given.
DEFAULT_CHECKPOINT = Path(__file__).parent / "weights" / "koa-dual-kl224.safetensors"


def resolve_checkpoint(path: str | Path | None) -> Path:
    """The given checkpoint, or the shipped one; one clear error if neither exists."""
    if path:
        return Path(path)
    if DEFAULT_CHECKPOINT.exists():
        return DEFAULT_CHECKPOINT
    raise KoaError("no --checkpoint given and no shipped checkpoint is installed "
                   f"({DEFAULT_CHECKPOINT.name}); train one with `koa train`")


def preprocessor_from_sidecar(side: dict) -> Preprocessor:
    p = side.get("preprocess") or {}
    try:
        return Preprocessor(size=int(p["size"]), crop=bool(p["crop"]),
                            clahe_clip=float(p["clahe_clip"]), clahe_tiles=int(p["clahe_tiles"]))
    except (KeyError, TypeError, ValueError):
        raise KoaError("checkpoint sidecar lacks its preprocessing parameters") from None


def _runtime(device: str | None):
    dev = torch.device(device) if device else resolve_device()
    return dev, amp_dtype("auto", dev)


def _load_for_inference(ckpt: Path, dev: torch.device):
    """The checkpoint's model in channels_last (faster convolutions on CPUs and GPUs)."""
    model, side = load_checkpoint(ckpt, dev)
    return model.to(memory_format=torch.channels_last), side


def evaluate_checkpoint(checkpoint: str | Path | None, root: str | Path, split: str = "test",
                        out: str | Path | None = None, predictions: str | Path | None = None,
                        batch_size: int = 64, n_boot: int = 1000, cache_dir: str | None = None,
                        allow_leakage: bool = False, device: str | None = None,
                        progress: bool = False, tta: str | None = None,
                        ensemble: list[str | Path] | None = None) -> dict:
    """Metrics of a checkpoint on one split; optionally writes metrics JSON and a CSV.

    ``tta="flip"``: each knee's probabilities averaged with its mirror's. ``ensemble``:
    more checkpoints whose probabilities (and gates, where every member has one) are
    averaged with this one's, each fed the views its own sidecar prescribes."""
    if tta not in (None, "none", "flip"):
        raise KoaError(f"--tta: {tta!r} is not one of none, flip")
    ckpt = resolve_checkpoint(checkpoint)
    dev, dtype = _runtime(device)
    model, side = _load_for_inference(ckpt, dev)
    members = [(ckpt, model, side)]
    for extra in ensemble or []:
        e = resolve_checkpoint(extra)
        members.append((e, *_load_for_inference(e, dev)))
    for target in (out, predictions):
        if target is not None:
            parent = Path(target).parent
            if not parent.exists() or not os.access(parent, os.W_OK):
                raise KoaError(f"{target}: cannot write there (folder missing or read-only)")
    index = discover(root)
    index.require_no_leakage(allow_leakage)
    records = index.split(split)
    if not records:
        raise KoaError(f"{root}: no images in the {split!r} split "
                       f"(splits present: {', '.join(index.counts()) or 'none'})")
    all_probs, all_gates = [], []
    for _, m_model, m_side in members:
        views = ViewCache(cache_dir).get(records, preprocessor_from_sidecar(m_side),
                                         root=str(root), progress=progress)
        p, g = predict_views(m_model, views, batch_size, dev, dtype, channels_last=True,
                             tta=tta)
        all_probs.append(p)
        all_gates.append(g)
    probs = np.mean(all_probs, axis=0)
    gates = (np.mean(all_gates, axis=0) if all(g is not None for g in all_gates) else None)
    y_true = np.array([r.grade for r in records])
    y_pred = probs.argmax(1)
    metrics = classification_metrics(y_true, y_pred, n_boot=n_boot)
    metrics.update({"split": split, "checkpoint": str(ckpt), "data_root": str(root),
                    "model": side.get("config", {}).get("model", {}),
                    "precision": "bf16 autocast" if dtype is not None else "fp32",
                    "weights_dtype": side.get("weights_dtype"),
                    "tta": tta if tta and tta != "none" else None,
                    "ensemble": [str(c) for c, _, _ in members] if len(members) > 1 else None,
                    **provenance(device=dev)})
    if gates is not None:
        metrics["gate_raw_mean_by_grade"] = {
            str(g): float(gates[y_true == g, 0].mean()) for g in range(5) if (y_true == g).any()}
    if out is not None:
        Path(out).write_text(json.dumps(metrics, indent=2) + "\n")
    if predictions is not None:
        with open(predictions, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["path", "true_grade", "pred_grade"] + [f"p{g}" for g in range(5)]
                       + (["gate_raw"] if gates is not None else []))
            for i, r in enumerate(records):
                w.writerow([r.path, r.grade, int(y_pred[i])]
                           + [f"{p:.6f}" for p in probs[i]]
                           + ([f"{gates[i, 0]:.6f}"] if gates is not None else []))
    return metrics


@dataclass
class Prediction:
    path: str
    grade: int | None = None
    probabilities: list[float] | None = None
    gate: list[float] | None = None
    cams: list[str] | None = None
    precision: str | None = None  # "fp32" or "bf16 autocast": how the model was run
    error: str | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    def line(self) -> str:
        if self.error:
            return f"{self.path}: error: {self.error}"
        probs = " ".join(f"{p:.3f}" for p in self.probabilities)
        return f"{self.path}: KL{self.grade} ({GRADE_NAMES[self.grade].split(' ', 1)[1]})  " \
               f"p[KL0..KL4] = {probs}"


def predict_files(paths: list[str], checkpoint: str | Path | None = None,
                  cam_dir: str | Path | None = None, device: str | None = None
                  ) -> list[Prediction]:
    """Grade each image; unreadable ones get an error entry and the rest go on."""
    ckpt = resolve_checkpoint(checkpoint)
    dev, dtype = _runtime(device)
    model, side = _load_for_inference(ckpt, dev)
    pre = preprocessor_from_sidecar(side)
    if cam_dir is not None:
        cam_dir = Path(cam_dir)
        try:
            cam_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise KoaError(f"{cam_dir}: cannot create the Grad-CAM folder ({exc.strerror})") \
                from None
    results = []
    for path in paths:
        try:
            raw, clahe = pre.load(path)
        except KoaError as exc:
            msg = str(exc)
            results.append(Prediction(path, error=msg[len(path) + 2:] if msg.startswith(
                f"{path}: ") else msg))
            continue
        views = np.stack([raw, clahe])[None]
        probs, gates = predict_views(model, views, 1, dev, dtype, channels_last=True)
        pred = Prediction(path, int(probs[0].argmax()), [float(p) for p in probs[0]],
                          [float(g) for g in gates[0]] if gates is not None else None,
                          precision="bf16 autocast" if dtype is not None else "fp32")
        if cam_dir is not None:
            from .explain import save_cam_overlays
            pred.cams = [str(p) for p in save_cam_overlays(model, views[0], cam_dir,
                                                           Path(path).stem, pred.grade)]
        results.append(pred)
    return results
