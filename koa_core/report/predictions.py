"""A checkpoint's per-image predictions on a split, as one frame (paper §3): the frame a
record's predictions give too (:func:`koa_core.report.published.record_frame`), read by the
training, evaluation and Grad-CAM chapters.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from koa_core.data.cache import ViewCache
from koa_core.data.index import discover
from koa_core.data.preprocess import Preprocessor
from koa_core.model.checkpoint import load_checkpoint
from koa_core.model.inference import predict_views

__all__ = ["predict_split"]


def predict_split(checkpoint: str | Path, data_root: str | Path, split: str = "val",
                  cache_dir: str | None = None) -> pd.DataFrame:
    """One row per image of a split: path, grade, patient, pred, p0..p4 and the gate w_raw
    (NaN for single-stream models)."""
    model, side = load_checkpoint(checkpoint)
    recs = discover(data_root).split(split)
    views = ViewCache(cache_dir).get(recs, Preprocessor.from_sidecar(side), root=str(data_root))
    probs, gates = predict_views(model, views)
    df = pd.DataFrame(probs, columns=[f"p{g}" for g in range(5)])
    df.insert(0, "path", [r.path for r in recs])
    df.insert(1, "grade", [r.grade for r in recs])
    df.insert(2, "patient", [r.patient or r.path for r in recs])
    df.insert(3, "pred", probs.argmax(1))
    df["gate_raw"] = gates[:, 0] if gates is not None else np.nan
    return df
