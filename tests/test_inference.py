"""Evaluation and prediction from a checkpoint (paper §3.1, Tables 3-4, Figs. 5-6)."""

import csv
import json

import pytest

from koa_core import inference
from koa_core.errors import KoaError


def test_evaluate_writes_metrics_and_predictions(tiny_run, tmp_path):
    run, root = tiny_run
    out, preds = tmp_path / "metrics.json", tmp_path / "preds.csv"
    m = inference.evaluate_checkpoint(run / "best.safetensors", root, split="test", out=out,
                                      predictions=preds, n_boot=200)
    saved = json.loads(out.read_text())
    for key in ("n", "accuracy", "macro_f1", "weighted_f1", "qwk", "mae", "per_class",
                "confusion_matrix", "ci"):
        assert key in saved
    assert saved["n"] == m["n"] > 0
    assert sorted(saved["per_class"]) == ["0", "1", "2", "3", "4"]
    cm = saved["confusion_matrix"]
    assert len(cm) == 5 and all(len(r) == 5 for r in cm)
    assert sum(map(sum, cm)) == saved["n"]
    for k in ("accuracy", "macro_f1", "qwk"):
        lo, hi = saved["ci"][k]
        assert lo <= saved[k] <= hi
    rows = list(csv.DictReader(open(preds)))
    assert len(rows) == saved["n"]
    assert {"path", "true_grade", "pred_grade", "p0", "p4"} <= set(rows[0])
    probs = [float(rows[0][f"p{g}"]) for g in range(5)]
    assert sum(probs) == pytest.approx(1.0, abs=1e-4)
    acc = sum(r["true_grade"] == r["pred_grade"] for r in rows) / len(rows)
    assert acc == pytest.approx(saved["accuracy"])


def test_evaluate_missing_split(tiny_run, phantom_copy):
    """A root with train and val only (like a held-out copy) has no test split to score."""
    import shutil

    run, _ = tiny_run
    shutil.rmtree(phantom_copy / "test")
    with pytest.raises(KoaError, match="no images in the 'test' split"):
        inference.evaluate_checkpoint(run / "best.safetensors", phantom_copy, split="test")


def test_evaluate_unwritable_output(tiny_run, tmp_path):
    run, root = tiny_run
    with pytest.raises(KoaError, match="cannot write"):
        inference.evaluate_checkpoint(run / "best.safetensors", root,
                                      out=tmp_path / "no" / "m.json")


def test_predict_files_good_and_bad(tiny_run, tmp_path):
    run, root = tiny_run
    good = sorted((root / "val").rglob("*.png"))[:2]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 10)
    preds = inference.predict_files([str(good[0]), str(bad), str(good[1])],
                                    run / "best.safetensors", cam_dir=tmp_path / "cams")
    assert [p.error is None for p in preds] == [True, False, True]
    for p in (preds[0], preds[2]):
        assert 0 <= p.grade <= 4 and sum(p.probabilities) == pytest.approx(1, abs=1e-4)
        assert len(p.cams) == 2 and all(c.endswith("_cam.png") for c in p.cams)
        assert abs(sum(p.gate) - 1) < 1e-5
    assert "broken.png" not in preds[1].error  # path is printed once, by line()
    assert preds[1].line().startswith(f"{bad}: error: ")


def test_no_default_checkpoint(monkeypatch, tmp_path):
    monkeypatch.setattr(inference, "DEFAULT_CHECKPOINT", tmp_path / "none.safetensors")
    with pytest.raises(KoaError, match="koa train"):
        inference.resolve_checkpoint(None)
