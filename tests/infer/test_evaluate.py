"""Evaluation and prediction from a checkpoint (paper §3.1, Tables 3-4, Figs. 5-6)."""

import csv
import json

import pytest

from koa_core.errors import KoaError
from koa_core.infer import backends, predict
from koa_core.infer import evaluate as inference


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
    preds = predict.predict_files([str(good[0]), str(bad), str(good[1])],
                                  run / "best.safetensors", cam_dir=tmp_path / "cams")
    assert [p.error is None for p in preds] == [True, False, True]
    for p in (preds[0], preds[2]):
        assert 0 <= p.grade <= 4 and sum(p.probabilities) == pytest.approx(1, abs=1e-4)
        assert len(p.cams) == 2 and all(c.endswith("_cam.png") for c in p.cams)
        assert abs(sum(p.gate) - 1) < 1e-5
    assert "broken.png" not in preds[1].error  # path is printed once, by line()
    assert preds[1].line().startswith(f"{bad}: error: ")


def test_no_default_checkpoint(monkeypatch, tmp_path):
    from koa_core.model import checkpoint

    monkeypatch.setattr(checkpoint, "DEFAULT_CHECKPOINT", tmp_path / "none.safetensors")
    with pytest.raises(KoaError, match="koa train"):
        checkpoint.resolve_checkpoint(None)


def test_predict_and_evaluate_agree_at_the_sidecars_size(tiny_run, tmp_path, monkeypatch):
    """The same image gets the same grade and probabilities from koa predict and koa
    evaluate, and both feed the model at the size stored in the checkpoint's sidecar.
    (fp32 forced: on a CPU with native bf16, batch 64 and batch 1 round differently.)"""
    from koa_core.model.checkpoint import read_sidecar
    from koa_core.model.network import KLNet

    monkeypatch.setattr(backends, "amp_dtype", lambda mode, device: None)
    run, root = tiny_run
    ckpt = run / "best.safetensors"
    size = read_sidecar(ckpt)["preprocess"]["size"]
    seen = []
    real_forward = KLNet.forward

    def spy(self, x):
        seen.append(tuple(x.shape[-2:]))
        return real_forward(self, x)

    preds_csv = tmp_path / "preds.csv"
    try:
        KLNet.forward = spy
        inference.evaluate_checkpoint(ckpt, root, split="val", predictions=preds_csv, n_boot=0)
        rows = list(csv.DictReader(open(preds_csv)))[:4]
        preds = predict.predict_files([r["path"] for r in rows], ckpt)
    finally:
        KLNet.forward = real_forward
    assert seen and set(seen) == {(size, size)}
    for r, p in zip(rows, preds):
        assert p.grade == int(r["pred_grade"])
        assert p.probabilities == pytest.approx([float(r[f"p{g}"]) for g in range(5)],
                                                abs=2e-5)
        assert p.precision in ("fp32", "bf16 autocast")


def test_bf16_and_fp32_inference_agree(tiny_run, tmp_path, monkeypatch):
    """bf16 autocast (forced, native or emulated) against fp32 on a phantom split: the same
    grade for >= 99 % of images, probabilities within 0.02."""
    import numpy as np
    import torch

    run, root = tiny_run
    out = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        monkeypatch.setattr(backends, "amp_dtype", lambda mode, device, d=dtype: d)
        path = tmp_path / f"agree-{name}.csv"
        inference.evaluate_checkpoint(run / "best.safetensors", root, split="val",
                                      predictions=path, n_boot=0)
        rows = list(csv.DictReader(open(path)))
        out[name] = (np.array([int(r["pred_grade"]) for r in rows]),
                     np.array([[float(r[f"p{g}"]) for g in range(5)] for r in rows]))
    same = (out["fp32"][0] == out["bf16"][0]).mean()
    assert same >= 0.99
    assert np.abs(out["fp32"][1] - out["bf16"][1]).max() < 0.02


def _probs_csv(path):
    rows = list(csv.DictReader(open(path)))
    import numpy as np
    return np.array([[float(r[f"p{g}"]) for g in range(5)] for r in rows])


def test_evaluate_ensemble_averages_members_and_tta_is_recorded(tiny_run, tmp_path):
    import torch

    from koa_core.model.checkpoint import load_checkpoint, read_sidecar, save_checkpoint

    run, root = tiny_run
    a = run / "best.safetensors"
    model, _ = load_checkpoint(a)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    side = {k: v for k, v in read_sidecar(a).items()
            if k not in ("format", "code_version", "class_names", "weights_dtype")}
    b = save_checkpoint(tmp_path / "b.safetensors", model, side)
    out = {}
    for name, kw in {"a": {}, "b": {"checkpoint": b}, "ab": {"ensemble": [b]},
                     "a_flip": {"tta": "flip"}}.items():
        ckpt = kw.pop("checkpoint", a)
        m = inference.evaluate_checkpoint(ckpt, root, split="val", n_boot=0,
                                          predictions=tmp_path / f"{name}.csv", **kw)
        out[name] = (m, _probs_csv(tmp_path / f"{name}.csv"))
    pa, pb, pab = out["a"][1], out["b"][1], out["ab"][1]
    assert abs(pa - pb).max() > 1e-3  # two different members
    assert abs(pab - (pa + pb) / 2).max() < 2e-6
    assert out["ab"][0]["ensemble"] == [str(a), str(b)] and out["a"][0]["ensemble"] is None
    m_flip, p_flip = out["a_flip"]
    assert m_flip["tta"] == "flip" and out["a"][0]["tta"] is None
    assert abs(p_flip - pa).max() > 1e-4 and abs(p_flip.sum(1) - 1).max() < 1e-4
    with pytest.raises(KoaError, match="tta"):
        inference.evaluate_checkpoint(a, root, split="val", n_boot=0, tta="rot")


# ---------------------------------------------------------------- koa calibrate
def _copy_checkpoint(run, tmp_path):
    import shutil

    dst = tmp_path / "ckpt.safetensors"
    shutil.copy(run / "best.safetensors", dst)
    shutil.copy(run / "best.json", dst.with_suffix(".json"))
    return dst


def _probs(csv_path):
    import numpy as np

    rows = list(csv.DictReader(open(csv_path)))
    return (np.array([[float(r[f"p{g}"]) for g in range(5)] for r in rows]),
            np.array([int(r["true_grade"]) for r in rows]), rows)


def _fp32(mode, device):
    return None  # backends.amp_dtype forced off: fp32 on every CPU


def test_calibrate_stores_a_temperature_that_evaluate_and_predict_apply(
        tiny_run, tmp_path, capsys, monkeypatch):
    """koa calibrate fits T on the validation knees (and reads no other split), stores it in
    the sidecar without touching the weights; evaluate and predict then report
    softmax(log p / T) with the same grades, and --uncalibrated gives the plain softmax.
    Every path runs in fp32: with bf16 autocast (CPUs with AMX or AVX512-BF16) a batch of
    one knee and a batch of twenty give probabilities that differ by more than 2e-5."""
    import numpy as np

    from koa_core.cli import main
    from koa_core.infer import backends
    from koa_core.metrics.calibration import apply_temperature, fit_temperature
    from koa_core.model.checkpoint import load_checkpoint, read_sidecar

    run, root = tiny_run
    ckpt = _copy_checkpoint(run, tmp_path)
    weights = ckpt.read_bytes()
    monkeypatch.setattr(backends, "amp_dtype", _fp32)
    inference.evaluate_checkpoint(ckpt, root, split="val", n_boot=0,
                                  predictions=tmp_path / "raw.csv")
    raw, y, raw_rows = _probs(tmp_path / "raw.csv")

    splits = []
    get = inference.ViewCache.get
    monkeypatch.setattr(inference.ViewCache, "get", lambda self, recs, *a, **k: (
        splits.extend(r.split for r in recs), get(self, recs, *a, **k))[1])
    assert main(["calibrate", "--checkpoint", str(ckpt), "--data", str(root),
                 "--engine", "torch", "--quiet"]) == 0
    monkeypatch.undo()
    monkeypatch.setattr(backends, "amp_dtype", _fp32)
    assert set(splits) == {"val"} and len(splits) == len(y)
    out = capsys.readouterr().out
    cal = read_sidecar(ckpt)["calibration"]
    t = cal["temperature"]
    assert out.startswith(f"temperature {t:.3f} fitted on {len(y)} validation knees")
    assert t == pytest.approx(fit_temperature(raw, y), rel=2e-3)
    assert abs(np.log(t)) > 0.05  # far enough from 1 for the checks below to see it
    assert cal["nll"]["after"] <= cal["nll"]["before"]
    assert cal["knees"] == len(y) and cal["split"] == "val"
    assert cal["command"].startswith("koa calibrate --checkpoint")
    assert ckpt.read_bytes() == weights
    load_checkpoint(ckpt)  # the sidecar's SHA-256 still matches the weights

    m = inference.evaluate_checkpoint(ckpt, root, split="val", n_boot=0,
                                      predictions=tmp_path / "cal.csv")
    scaled, _, rows = _probs(tmp_path / "cal.csv")
    assert m["temperatures"] == [t]
    assert scaled == pytest.approx(apply_temperature(raw, t), abs=2e-5)
    assert not np.allclose(scaled, raw, atol=1e-3)
    assert [r["pred_grade"] for r in rows] == [r["pred_grade"] for r in raw_rows]
    plain = inference.evaluate_checkpoint(ckpt, root, split="val", n_boot=0, calibrated=False,
                                          predictions=tmp_path / "plain.csv")
    assert plain["temperatures"] == [None]
    assert _probs(tmp_path / "plain.csv")[0] == pytest.approx(raw, abs=1e-6)

    capsys.readouterr()
    assert main(["predict", rows[0]["path"], "--checkpoint", str(ckpt), "--engine", "torch",
                 "--json"]) == 0
    p = json.loads(capsys.readouterr().out)[0]
    assert p["temperature"] == t
    assert p["probabilities"] == pytest.approx(scaled[0], abs=2e-5)
    assert main(["predict", rows[0]["path"], "--checkpoint", str(ckpt), "--engine", "torch",
                 "--json", "--uncalibrated"]) == 0
    p = json.loads(capsys.readouterr().out)[0]
    assert "temperature" not in p
    assert p["probabilities"] == pytest.approx(raw[0], abs=2e-5)


def test_calibrate_refuses_what_it_cannot_calibrate(tiny_run, tmp_path, capsys):
    from koa_core.cli import main
    from koa_core.model.checkpoint import update_sidecar

    run, root = tiny_run
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"not read")
    assert main(["calibrate", "--checkpoint", str(onnx), "--data", str(root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"koa: error: {onnx}: calibrate the .safetensors checkpoint (its sidecar "
                   "keeps the temperature, and an ONNX export made from it afterwards "
                   "carries it)"]
    from koa_core.metrics.calibration import sidecar_temperature

    for bad in (-1.0, 0.0, float("nan"), float("inf"), "warm", None):
        with pytest.raises(KoaError, match="calibration.temperature"):
            sidecar_temperature({"calibration": {"temperature": bad}})
    assert sidecar_temperature({}) is None
    assert sidecar_temperature({"calibration": {"temperature": "1.5"}}) == 1.5
    ckpt = _copy_checkpoint(run, tmp_path)  # and a bad one stops evaluation with that line
    update_sidecar(ckpt, {"calibration": {"temperature": -1.0}})
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data", str(root), "--split", "val",
                 "--engine", "torch", "--quiet"]) == 2
    assert capsys.readouterr().err == ("koa: error: checkpoint sidecar: "
                                       "calibration.temperature must be a positive number "
                                       "(got -1.0)\n")
