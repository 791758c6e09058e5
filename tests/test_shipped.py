"""The shipped checkpoint (koa_core/weights): loads strictly, runs, and is the run its
record says, on the real validation knees when they are present."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from koa_core.checkpoint import load_checkpoint, read_sidecar
from koa_core.inference import DEFAULT_CHECKPOINT, preprocessor_from_sidecar
from test_realdata import REAL

RESULTS = Path(__file__).resolve().parents[1] / "results" / "gpu"


def test_shipped_checkpoint_loads_strictly_and_runs():
    model, side = load_checkpoint(DEFAULT_CHECKPOINT)  # strict: every tensor matches
    size = side["preprocess"]["size"]
    x = torch.randint(0, 256, (2, 2, size, size), dtype=torch.uint8)
    with torch.no_grad():
        out = model(x)
    assert out["logits"].shape == (2, 5) and torch.isfinite(out["logits"]).all()
    assert out["gate"] is not None and torch.allclose(out["gate"].sum(1), torch.ones(2))
    assert side["select_metric"] == "macro_f1"


def test_shipped_checkpoint_predicts_what_its_record_says():
    """On 50 real validation knees (a fixed stratified subset) the shipped weights give the
    grades that the selected run's record holds (computed on the GPU in bf16) for at least
    49 of them; the full split's figures are results/gpu/shipped-val-cpu.json."""
    if not (REAL / "val").is_dir():
        pytest.skip(f"real KL dataset not found at {REAL}")
    from koa_core.data import Record
    from koa_core.dataset import stratified_subset
    from koa_core.engine import predict_views
    from koa_core.records import read_record

    name = json.loads((RESULTS / "selection.json").read_text())["name"]
    assert name in read_sidecar(DEFAULT_CHECKPOINT)["note"]
    pred = read_record(RESULTS / "runs" / name)["predictions"]
    recs = [Record(path=str(REAL / p), grade=int(g), split="val")
            for p, g in zip(pred["path"], pred["grade"])]
    keep = stratified_subset(recs, 50, seed=0)
    index = {r.path: i for i, r in enumerate(recs)}
    model, side = load_checkpoint(DEFAULT_CHECKPOINT)
    pre = preprocessor_from_sidecar(side)
    views = np.stack([np.stack(pre.load(r.path)) for r in keep])
    probs, _ = predict_views(model, views, batch_size=50)
    expected = np.array([pred["pred"][index[r.path]] for r in keep])
    assert (probs.argmax(1) == expected).sum() >= len(keep) - 1
