"""Inference backends: torch and ONNX Runtime fp32/int8 give the same answers (issue: fast
on any CPU). The torch side is forced to fp32 so the comparisons hold on CPUs with and
without native bf16."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from koa_core.cli import main
from koa_core.data.cache import ViewCache
from koa_core.data.index import discover
from koa_core.data.preprocess import Preprocessor
from koa_core.errors import KoaError
from koa_core.infer import backends
from koa_core.infer import onnx as onnx_files
from koa_core.infer.evaluate import evaluate_checkpoint
from koa_core.model.checkpoint import read_sidecar

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exported(tiny_run, tiny_onnx, tmp_path_factory):
    """The tiny run's checkpoint as fp32 and int8 ONNX files, and validation views."""
    run, root = tiny_run
    ckpt = run / "best.safetensors"
    pre = Preprocessor.from_sidecar(read_sidecar(ckpt))
    index = discover(root)
    val = np.asarray(ViewCache().get(index.split("val"), pre, root=str(root)))
    calib = np.asarray(ViewCache().get(index.split("train")[:16], pre, root=str(root)))
    tmp = tmp_path_factory.mktemp("onnx")
    fp32 = tiny_onnx  # exported once per session (conftest): the other tests reuse it
    int8 = backends.quantize_int8(fp32, tmp / "model-int8.onnx", calib)
    return ckpt, fp32, int8, val


@pytest.fixture
def reuse_export(exported, monkeypatch):
    """export_onnx and quantize_int8 replaced by copies of the module's fp32 and int8 files
    (quantizing itself is tested by the fixture and test_int8_is_quantized_and_close); the
    calls they received are listed."""
    import shutil

    ckpt, fp32, int8, _ = exported
    calls = []

    def copy(checkpoint, out, calibration=None):
        calls.append((checkpoint, calibration))
        assert str(checkpoint) == str(ckpt)
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(fp32 if calibration is None else int8, out)
        return out

    def copy_int8(fp32_path, out, calibration):
        calls.append((fp32_path, calibration))
        shutil.copy(int8, out)
        return Path(out)

    monkeypatch.setattr(backends, "export_onnx", copy)
    monkeypatch.setattr(backends, "quantize_int8", copy_int8)
    return calls


@pytest.fixture
def torch_fp32(monkeypatch):
    monkeypatch.setattr(backends, "amp_dtype", lambda mode, device: None)


def test_onnxruntime_fp32_matches_torch_fp32(exported, torch_fp32):
    ckpt, fp32, _, val = exported
    t, o = backends.TorchBackend(ckpt, "cpu"), backends.OrtBackend(fp32)
    assert (t.precision, o.precision) == ("fp32", "onnxruntime fp32")
    for tta in (None, "flip"):
        pt, gt = t.predict(val, 8, tta=tta)
        po, go = o.predict(val, 5, tta=tta)  # another batch size: the batch axis is dynamic
        assert po.dtype == np.float32 and po.shape == pt.shape
        np.testing.assert_allclose(po, pt, atol=1e-4)
        np.testing.assert_allclose(go, gt, atol=1e-5)
    # the mirror really is used: flip TTA differs from the plain prediction
    assert np.abs(o.predict(val, 8, tta="flip")[0] - o.predict(val, 8)[0]).max() > 1e-6


def test_onnx_file_carries_the_sidecar(exported):
    ckpt, fp32, int8, _ = exported
    for path in (fp32, int8):
        be = backends.OrtBackend(path)
        assert be.sidecar["preprocess"] == read_sidecar(ckpt)["preprocess"]
        assert be.sidecar["config"]["model"] == read_sidecar(ckpt)["config"]["model"]


def test_int8_is_quantized_and_close(exported, torch_fp32):
    import onnx

    _, fp32, int8, val = exported
    graph = onnx.load(str(int8)).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8_weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(int8_weights) >= 20  # every convolution of the trunk, per channel
    assert int8.stat().st_size < fp32.stat().st_size / 2.5
    be = backends.OrtBackend(int8)
    assert be.precision == "onnxruntime int8" and "calibrated on 16 knees" in be.quantization
    p8, g8 = be.predict(val, 8)
    p32, _ = backends.OrtBackend(fp32).predict(val, 8)
    np.testing.assert_allclose(p8.sum(1), 1, atol=1e-5)
    np.testing.assert_allclose(g8.sum(1), 1, atol=1e-5)
    diff = np.abs(p8 - p32)
    assert diff.max() > 0  # really a different computation
    assert diff.mean() < 0.05


def test_load_backend_exports_a_safetensors_checkpoint_once(exported, tmp_path, reuse_export):
    ckpt, _, _, val = exported
    first = backends.load_backend(ckpt, "onnxruntime", cache_dir=tmp_path)
    assert isinstance(first, backends.OrtBackend) and first.source == ckpt
    assert first.cam_model is not None  # Grad-CAM still possible: the source is known
    cached = list((tmp_path / "onnx").glob("*.onnx"))
    assert len(cached) == 1 and len(reuse_export) == 1
    assert cached[0].name.startswith(read_sidecar(ckpt)["weights_sha256"][:32])
    again = backends.load_backend(ckpt, "onnxruntime", cache_dir=tmp_path)
    assert len(reuse_export) == 1  # found in the cache, not exported again
    np.testing.assert_array_equal(again.predict(val[:4])[0], first.predict(val[:4])[0])


def test_engine_errors_are_one_line(exported, tmp_path):
    ckpt, fp32, _, _ = exported
    with pytest.raises(KoaError, match="koa export --onnx --int8"):
        backends.load_backend(ckpt, "onnxruntime-int8")
    with pytest.raises(KoaError, match="float32 ONNX file"):
        backends.load_backend(fp32, "onnxruntime-int8")
    with pytest.raises(KoaError, match="not one of"):
        backends.load_backend(ckpt, "tensorrt")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(KoaError, match="not a readable ONNX model") as e:
        backends.OrtBackend(junk)
    assert "\n" not in str(e.value)
    with pytest.raises(KoaError, match="no such ONNX file"):
        backends.OrtBackend(tmp_path / "missing.onnx")


def test_onnx_without_koa_metadata_is_refused(exported, tmp_path):
    import onnx

    _, fp32, _, _ = exported
    proto = onnx.load(str(fp32))
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, str(bare))
    with pytest.raises(KoaError, match="no koa_sidecar metadata"):
        backends.OrtBackend(bare)


def test_evaluate_and_predict_on_onnxruntime(exported, tiny_run, tmp_path, torch_fp32, capsys):
    ckpt, fp32, _, _ = exported
    _, root = tiny_run
    m_t = evaluate_checkpoint(ckpt, root, split="val", n_boot=0,
                              predictions=tmp_path / "t.csv")
    m_o = evaluate_checkpoint(fp32, root, split="val", n_boot=0,
                              predictions=tmp_path / "o.csv")
    assert (m_o["engine"], m_o["precision"]) == ("onnxruntime", "onnxruntime fp32")
    assert m_o["confusion_matrix"] == m_t["confusion_matrix"]
    rows_t = list(csv.DictReader(open(tmp_path / "t.csv")))
    rows_o = list(csv.DictReader(open(tmp_path / "o.csv")))
    for a, b in zip(rows_t, rows_o):
        assert [float(a[f"p{g}"]) for g in range(5)] == pytest.approx(
            [float(b[f"p{g}"]) for g in range(5)], abs=1e-4)
    files = [rows_t[0]["path"], rows_t[1]["path"]]
    capsys.readouterr()
    assert main(["predict", *files, "--checkpoint", str(fp32), "--json"]) == 0
    preds = json.loads(capsys.readouterr().out)
    assert [p["grade"] for p in preds] == [int(r["pred_grade"]) for r in rows_t[:2]]
    assert {p["engine"] for p in preds} == {"onnxruntime"}
    assert main(["predict", files[0], "--checkpoint", str(fp32), "--cam",
                 str(tmp_path / "cams")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("koa: error: Grad-CAM")


def test_cli_export_onnx(tiny_run, tmp_path, capsys, reuse_export):
    run, root = tiny_run
    out = tmp_path / "m.onnx"
    assert main(["export", str(run), "--onnx", "--out", str(out)]) == 0
    assert "fp32" in capsys.readouterr().out
    assert backends.OrtBackend(out).precision == "onnxruntime fp32"
    q = tmp_path / "q.onnx"
    assert main(["export", str(run / "best.safetensors"), "--onnx", "--int8", "--calibrate",
                 str(root), "--calibration-images", "6", "--out", str(q)]) == 0
    assert "int8, calibrated on 6 training knees" in capsys.readouterr().out
    assert reuse_export[-1][1].shape[0] == 6
    assert backends.OrtBackend(q).precision == "onnxruntime int8"
    assert main(["export", str(run), "--onnx", "--int8", "--out", str(out)]) == 2
    assert "--calibrate" in capsys.readouterr().err
    assert main(["export", str(run), "--out", str(tmp_path / "c.safetensors")]) == 2
    assert "--dataset is required" in capsys.readouterr().err


def test_bench_onnx_rows(exported, tiny_run, reuse_export):
    from koa_core.bench import format_table, onnx_rows

    ckpt, _, _, _ = exported
    _, root = tiny_run
    r = onnx_rows(ckpt, str(root), batch=4, steps=1, calibration_images=8,
                  agreement_images=4)
    engines = r["engines"]
    assert {"torch fp32", "onnxruntime fp32", "onnxruntime int8"} <= set(engines)
    assert r["agreement_knees"] == 4 and r["calibration_knees"] == 8
    assert engines["torch fp32"]["grade_agreement"] == 1.0
    assert engines["torch fp32"]["max_abs_prob_diff"] == 0.0
    assert engines["onnxruntime fp32"]["grade_agreement"] == 1.0
    assert engines["onnxruntime fp32"]["max_abs_prob_diff"] < 1e-4
    assert all(e["infer_img_s"] > 0 for e in engines.values())
    table = format_table({"machine": "m", "pipeline_images": 1, "size": 32, "batch": 4,
                          "pipeline": {"baseline_img_s": 1, "cache_build_img_s": 1,
                                       "cached_img_s": 1, "cache_reload_s": 0.1},
                          "onnx": r})
    assert "onnxruntime int8" in table and "same grade" in table


def test_auto_engine_is_torch_where_torch_is_faster(monkeypatch):
    monkeypatch.setattr(backends.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(backends, "cpu_has_bf16", lambda: True)
    assert backends.resolve_engine("auto") == "torch"  # AMX / AVX512-BF16
    monkeypatch.setattr(backends, "cpu_has_bf16", lambda: False)
    assert backends.resolve_engine("auto") == "onnxruntime"  # plain AVX2: 1.4x, same grades
    monkeypatch.setattr(backends.torch.cuda, "is_available", lambda: True)
    assert backends.resolve_engine("auto") == "torch"
    assert backends.resolve_engine("onnxruntime-int8") == "onnxruntime-int8"


def test_auto_engine_runs_onnxruntime_without_bf16(exported, tmp_path, monkeypatch, capsys,
                                                   reuse_export, tiny_run):
    ckpt, _, _, _ = exported
    _, root = tiny_run
    monkeypatch.setattr(backends.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(backends, "cpu_has_bf16", lambda: False)
    monkeypatch.setenv("KOA_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("KOA_ENGINE")
    image = sorted((root / "val").rglob("*.png"))[0]
    assert main(["predict", str(image), "--checkpoint", str(ckpt), "--json"]) == 0
    pred = json.loads(capsys.readouterr().out)[0]
    assert (pred["engine"], pred["precision"]) == ("onnxruntime", "onnxruntime fp32")
    monkeypatch.setenv("KOA_ENGINE", "torch")
    assert main(["predict", str(image), "--checkpoint", str(ckpt), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["engine"] == "torch"


def test_a_temperature_fitted_after_the_cached_export_still_applies(exported, tmp_path):
    """The cached ONNX export of a checkpoint carries the sidecar of its export time; the
    temperature koa calibrate stores later must still scale what ONNX Runtime reports."""
    import shutil

    from koa_core.metrics.calibration import apply_temperature
    from koa_core.model.checkpoint import update_sidecar

    ckpt, fp32, _, val = exported
    copy = tmp_path / "ckpt.safetensors"
    shutil.copy(ckpt, copy)
    shutil.copy(ckpt.with_suffix(".json"), copy.with_suffix(".json"))
    cached = backends.onnx_cache_path(copy, tmp_path / "cache")
    cached.parent.mkdir(parents=True)
    shutil.copy(fp32, cached)  # exported before the temperature existed
    update_sidecar(copy, {"calibration": {"temperature": 2.5}})
    b = backends.load_backend(copy, "onnxruntime", cache_dir=tmp_path / "cache")
    assert b.temperature == 2.5
    plain, _ = backends.OrtBackend(fp32).predict(val)
    assert b.predict(val)[0] == pytest.approx(apply_temperature(plain, 2.5), abs=1e-5)
    b.calibrated = False
    assert b.temperature is None
    assert b.predict(val)[0] == pytest.approx(plain, abs=1e-6)


def _with_input_clahe(src: Path, dst: Path, clip: float = 5.0) -> Path:
    """A copy of checkpoint ``src`` whose sidecar says its training images had CLAHE at
    ``clip`` (8x8 tiles) applied upstream, as the shipped checkpoint's did."""
    import shutil

    from koa_core.model.checkpoint import update_sidecar

    shutil.copy(src, dst)
    shutil.copy(src.with_suffix(".json"), dst.with_suffix(".json"))
    pre = {**read_sidecar(dst)["preprocess"], "input_clahe_clip": clip, "input_clahe_tiles": 8}
    update_sidecar(dst, {"preprocess": pre})
    return dst


def _onnx_with_sidecar(src: Path, dst: Path, sidecar: dict) -> Path:
    """An ONNX file of ``src``'s network carrying ``sidecar`` (what koa export writes)."""
    import onnx

    proto = onnx.load(str(src))
    meta = {p.key: p.value for p in proto.metadata_props}
    onnx_files.set_metadata(proto, sidecar, meta[onnx_files.META_QUANT])
    onnx.save(proto, str(dst))
    return dst


def test_the_input_transform_travels_with_the_checkpoint_to_every_backend(
        exported, tiny_run, tmp_path, torch_fp32):
    """A checkpoint trained on CLAHE-enhanced copies (input_clahe_clip in its sidecar) grades
    an original image exactly as a plain checkpoint grades its enhanced twin, on torch,
    ONNX Runtime fp32 (cached export and standalone file) and int8: the bug was every
    backend feeding the original pixels to a model that had only seen enhanced ones."""
    import cv2

    from koa_core.data.preprocess import apply_clahe
    from koa_core.infer.predict import iter_predictions

    ckpt, fp32, int8, _ = exported
    _, root = tiny_run
    originals = [str(r.path) for r in discover(root).split("val")][:12]
    twins = []
    for i, f in enumerate(originals):
        twin = tmp_path / f"twin{i}.png"
        img = cv2.imread(f, cv2.IMREAD_GRAYSCALE)
        cv2.imwrite(str(twin), cv2.createCLAHE(clipLimit=5.0, tileGridSize=(8, 8)).apply(img))
        twins.append(str(twin))
    enhanced = _with_input_clahe(ckpt, tmp_path / "enh.safetensors")
    side = read_sidecar(enhanced)
    pre = Preprocessor.from_sidecar(side)
    assert (pre.input_clahe_clip, pre.input_clahe_tiles) == (5.0, 8)
    assert Preprocessor.from_sidecar(read_sidecar(ckpt)).input_clahe_clip is None
    a = cv2.imread(originals[0], cv2.IMREAD_GRAYSCALE)
    np.testing.assert_array_equal(pre.transform_input(a), apply_clahe(a, 5.0, 8))

    cache = tmp_path / "cache"
    cached = backends.onnx_cache_path(enhanced, cache)
    cached.parent.mkdir(parents=True)
    import shutil

    shutil.copy(fp32, cached)  # the export of the same weights, cached before the change
    pairs = [
        (backends.load_backend(enhanced, "torch", "cpu"),
         backends.load_backend(ckpt, "torch", "cpu")),
        (backends.load_backend(enhanced, "onnxruntime", cache_dir=cache),
         backends.OrtBackend(fp32)),
        (backends.OrtBackend(_onnx_with_sidecar(fp32, tmp_path / "e32.onnx", side)),
         backends.OrtBackend(fp32)),
        (backends.OrtBackend(_onnx_with_sidecar(int8, tmp_path / "e8.onnx", side)),
         backends.OrtBackend(int8)),
    ]
    for on_originals, on_twins in pairs:
        got = list(iter_predictions(originals, on_originals, batch_size=5))
        want = list(iter_predictions(twins, on_twins, batch_size=5))
        assert all(p.error is None for p in got + want)
        assert [p.grade for p in got] == [p.grade for p in want]
        np.testing.assert_allclose([p.probabilities for p in got],
                                   [p.probabilities for p in want], atol=1e-6)
        # and the transform really matters: without it the original pixels differ
        plain = list(iter_predictions(originals, on_twins, batch_size=5))
        assert np.abs(np.array([p.probabilities for p in plain])
                      - np.array([p.probabilities for p in want])).max() > 1e-4
