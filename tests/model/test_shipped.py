"""The shipped checkpoint (koa_core/weights): loads strictly, runs, and is the run its
record says, on the real validation knees when they are present."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_realdata import REAL

from koa_core.data.preprocess import Preprocessor
from koa_core.model.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint, read_sidecar

RESULTS = Path(__file__).resolve().parents[2] / "results" / "gpu"


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
    from koa_core.data.index import Record
    from koa_core.experiments.records import read_record
    from koa_core.model.inference import predict_views
    from koa_core.train.dataset import stratified_subset

    name = json.loads((RESULTS / "selection.json").read_text())["name"]
    assert name in read_sidecar(DEFAULT_CHECKPOINT)["note"]
    pred = read_record(RESULTS / "runs" / name)["predictions"]
    recs = [Record(path=str(REAL / p), grade=int(g), split="val")
            for p, g in zip(pred["path"], pred["grade"])]
    keep = stratified_subset(recs, 50, seed=0)
    index = {r.path: i for i, r in enumerate(recs)}
    model, side = load_checkpoint(DEFAULT_CHECKPOINT)
    pre = Preprocessor.from_sidecar(side)
    views = np.stack([np.stack(pre.load(r.path)) for r in keep])
    probs, _ = predict_views(model, views, batch_size=50)
    expected = np.array([pred["pred"][index[r.path]] for r in keep])
    assert (probs.argmax(1) == expected).sum() >= len(keep) - 1


SAMPLE = Path(__file__).resolve().parents[2] / "book" / "sample"


def test_shipped_checkpoint_grades_an_original_knee_as_its_enhanced_twin(tmp_path, capsys,
                                                                        monkeypatch):
    """The shipped checkpoint was trained on crops enhanced upstream with CLAHE at clip 5.0
    (8x8). On the committed sample's original knees `koa predict` gives the grade and the
    fp32 probabilities (within 1e-6) that the same weights give the enhanced twins without
    the input transform: the pixels the network sees are identical. The bug it names: the
    transform left behind, original pixels fed to a model that never saw one."""
    import cv2

    from koa_core.cli import main
    from koa_core.infer import backends
    from koa_core.model.checkpoint import update_sidecar

    monkeypatch.setattr(backends, "amp_dtype", lambda mode, device: None)  # fp32 everywhere
    files = sorted(SAMPLE.glob("val/*/*.webp"))[::5]  # 10 knees, two per grade
    assert len(files) == 10
    twins = tmp_path / "twins"
    twins.mkdir()
    clahe = cv2.createCLAHE(clipLimit=5.0, tileGridSize=(8, 8))
    for f in files:
        cv2.imwrite(str(twins / f"{f.stem}.png"), clahe.apply(cv2.imread(str(f), 0)))
    plain = tmp_path / "plain.safetensors"  # the same weights, told of no input transform
    plain.write_bytes(DEFAULT_CHECKPOINT.read_bytes())
    plain.with_suffix(".json").write_text(DEFAULT_CHECKPOINT.with_suffix(".json").read_text())
    pre = read_sidecar(plain)["preprocess"]
    assert (pre["input_clahe_clip"], pre["input_clahe_tiles"]) == (5.0, 8)
    update_sidecar(plain, {"preprocess": {**pre, "input_clahe_clip": None}})

    def grade(paths, ckpt):
        assert main(["predict", *map(str, paths), "--checkpoint", str(ckpt), "--engine",
                     "torch", "--json"]) == 0
        return json.loads(capsys.readouterr().out)

    originals = grade(files, DEFAULT_CHECKPOINT)
    enhanced = grade(sorted(twins.glob("*.png"), key=lambda p: [f.stem for f in files]
                            .index(p.stem)), plain)
    assert [p["grade"] for p in originals] == [p["grade"] for p in enhanced]
    np.testing.assert_allclose([p["probabilities"] for p in originals],
                               [p["probabilities"] for p in enhanced], atol=1e-6)
    bare = grade(files, plain)  # what users got before: the originals without the transform
    assert np.abs(np.array([p["probabilities"] for p in bare])
                  - np.array([p["probabilities"] for p in enhanced])).max() > 0.05
