"""Hostile checkpoints, ONNX files and calibration sets: each is refused in one line, on
every engine, or used for what it is, never graded silently wrong.

A checkpoint is checked as a whole before any engine runs it: its format by parsing the
safetensors header (never by one byte), its weights against the sidecar's SHA-256, the
sidecar's architecture and preprocessing against the configuration's ranges and the
weights' tensor shapes. An ONNX file's metadata and outputs are checked when it is
loaded; an unwritable ONNX cache means torch, said in one line. ``koa calibrate`` and
``koa input-profile`` refuse too few or degenerate images. Every case runs on the
session's tiny 64-pixel run (``tiny_run``) and its shared ONNX export (``tiny_onnx``); the
ONNX cache is primed with that export instead of exporting again.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from test_hostile import _ckpt, _knee, _one_line, _png

from koa_core.cli import main
from koa_core.errors import KoaError
from koa_core.infer import backends
from koa_core.infer.onnx import META_SIDECAR, onnx_cache_path
from koa_core.model.checkpoint import load_checkpoint, read_sidecar, sidecar_path, write_pair


# ------------------------------------------------------------------ helpers
def _copy(tiny_run, dst: Path, model: dict | None = None, preprocess: dict | None = None
          ) -> Path:
    """A copy of the tiny checkpoint whose sidecar's model and preprocess entries are
    changed by ``model`` and ``preprocess`` (the weights and their SHA-256 unchanged)."""
    src = Path(_ckpt(tiny_run))
    shutil.copy(src, dst)
    side = read_sidecar(src)
    side["config"]["model"].update(model or {})
    side["preprocess"].update(preprocess or {})
    sidecar_path(dst).write_text(json.dumps(side))
    return dst


@pytest.fixture
def primed(tiny_onnx, tmp_path, monkeypatch):
    """``primed(checkpoint) -> cache folder``: the ONNX cache holds the tiny run's real
    export where the checkpoint's lookup goes; a new export is a copy of it too."""
    cache = tmp_path / "cache"

    def export(checkpoint, out):
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copy(tiny_onnx, out))

    monkeypatch.setattr(backends, "export_onnx", export)

    def prime(checkpoint) -> Path:
        export(checkpoint, onnx_cache_path(checkpoint, cache))
        return cache

    return prime


def _views(n: int = 2) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, 2, 64, 64), dtype=np.uint8)


def _zeroed(tiny_run, dst: Path) -> Path:
    """The tiny checkpoint's tensors, every one zeroed, beside a copy of its sidecar."""
    src = Path(_ckpt(tiny_run))
    zeros = {k: torch.zeros_like(v) for k, v in load_file(str(src)).items()}
    save_file(zeros, str(dst), metadata={"format": "koa_core-checkpoint-1"})
    shutil.copy(sidecar_path(src), sidecar_path(dst))
    return dst


# ------------------------------------------------------------------ 1. the weights' hash
def test_zeroed_weights_beside_a_copied_sidecar_are_refused_on_every_engine(
        tiny_run, tmp_path, primed):
    """The default engine looked its cached export up by the sidecar's hash and graded the
    zeroed file with the real weights' probabilities; torch already refused it."""
    pytest.importorskip("onnxruntime")
    real = Path(_ckpt(tiny_run))
    zeroed = _zeroed(tiny_run, tmp_path / "zeroed.safetensors")
    assert onnx_cache_path(zeroed, tmp_path) != onnx_cache_path(real, tmp_path)
    cache = primed(zeroed)
    for engine in ("torch", "onnxruntime"):
        with pytest.raises(KoaError) as ei:
            backends.load_backend(zeroed, engine, "cpu", cache_dir=cache)
        _one_line(ei, "the weights do not match their sidecar's SHA-256")


# ------------------------------------------------------------------ 2. the format, parsed
def _padded_to_0x80(tiny_run, dst: Path) -> Path:
    """The tiny checkpoint rewritten with metadata padding that makes its header length's
    first (least significant) byte 0x80, as one safetensors file in 256 has it."""
    src = Path(_ckpt(tiny_run))
    tensors = load_file(str(src))
    side = {k: v for k, v in read_sidecar(src).items() if k != "weights_sha256"}
    meta = {"format": "koa_core-checkpoint-1", "pad": ""}
    write_pair(dst, tensors, side, metadata=meta)
    with open(dst, "rb") as fh:  # the header is padded to 8 bytes: pad by a multiple of 8
        meta["pad"] = " " * ((0x80 - fh.read(1)[0]) % 256)
    write_pair(dst, tensors, side, metadata=meta)
    with open(dst, "rb") as fh:
        assert fh.read(1)[0] == 0x80
    return dst


def test_a_safetensors_header_length_starting_with_0x80_loads(tiny_run, tmp_path):
    padded = _padded_to_0x80(tiny_run, tmp_path / "padded.safetensors")
    model, _ = load_checkpoint(padded)
    reference, _ = load_checkpoint(_ckpt(tiny_run))
    x = torch.from_numpy(_views())
    with torch.no_grad():
        assert torch.equal(model(x)["logits"], reference(x)["logits"])


@pytest.mark.parametrize("kind, fragment", [
    ("pickle", "a pickle (protocol 4), not safetensors"),
    ("zip", "a zip archive (torch.save's format, which holds a pickle), not safetensors"),
    ("junk", "not a safetensors file"),
])
def test_a_file_that_is_not_safetensors_is_refused_by_what_it_is(tiny_run, tmp_path, kind,
                                                                 fragment):
    import pickle

    path = tmp_path / "m.safetensors"
    if kind == "pickle":
        path.write_bytes(pickle.dumps({"w": [1.0, 2.0]}, protocol=4))
    elif kind == "zip":
        torch.save({"w": torch.zeros(3)}, path)
    else:  # 0x80 first, then a header length far beyond the file
        path.write_bytes(b"\x80\x00\x00\x00\x00\x01\x00\x00{}" + b"\0" * 64)
    shutil.copy(sidecar_path(Path(_ckpt(tiny_run))), sidecar_path(path))
    with pytest.raises(KoaError) as ei:
        load_checkpoint(path)
    _one_line(ei, fragment)


# ------------------------------------------------------------------ 3. the sidecar's claims
@pytest.mark.parametrize("model, fragment", [
    ({"streams": "raw"}, "do not match the sidecar's model (streams raw"),
    ({"head": "corn"}, "do not match the sidecar's model (streams dual"),
    ({"num_classes": 7}, "model.num_classes = 7: must be one of 5"),
])
def test_a_sidecar_claiming_another_architecture_is_refused_on_every_engine(
        tiny_run, tmp_path, primed, model, fragment):
    pytest.importorskip("onnxruntime")
    ckpt = _copy(tiny_run, tmp_path / "m.safetensors", model=model)
    cache = primed(ckpt)
    for engine in ("onnxruntime", "torch"):
        with pytest.raises(KoaError) as ei:
            backends.load_backend(ckpt, engine, "cpu", cache_dir=cache)
        _one_line(ei, fragment)


@pytest.mark.parametrize("key, value, allowed", [
    ("clahe_tiles", 0, "an integer >= 1"),
    ("size", 0, "an integer in [32, 1024]"),
    ("size", -4, "an integer in [32, 1024]"),
    ("size", 20000, "an integer in [32, 1024]"),
    ("clahe_clip", float("nan"), "a finite number in (0, 1000)"),
    ("clahe_clip", -1.0, "a finite number in (0, 1000)"),
    ("input_clahe_clip", float("inf"), "a finite number in (0, 1000)"),
])
def test_sidecar_preprocess_values_are_range_checked_on_every_engine(
        tiny_run, tmp_path, primed, key, value, allowed):
    """clahe_tiles 0 killed the process with SIGFPE, a bad size gave tracebacks, a NaN or
    negative clip graded silently: each is now the configuration's own range check."""
    pytest.importorskip("onnxruntime")
    ckpt = _copy(tiny_run, tmp_path / "m.safetensors", preprocess={key: value})
    cache = primed(ckpt)
    for engine in ("torch", "onnxruntime"):
        with pytest.raises(KoaError) as ei:
            backends.load_backend(ckpt, engine, "cpu", cache_dir=cache)
        _one_line(ei, f"preprocess.{key} = {value!r}: must be {allowed}")


def test_koa_evaluate_with_a_bad_sidecar_size_is_one_line(tiny_run, tmp_path, capsys):
    ckpt = _copy(tiny_run, tmp_path / "m.safetensors", preprocess={"size": -4})
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data", str(tiny_run[1]),
                 "--split", "val", "--out", str(out), "--engine", "torch", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "preprocess.size = -4" in err[0], err
    assert not out.exists()


# ------------------------------------------------------------------ 4. ONNX files
def _onnx(src: Path, dst: Path, edit) -> Path:
    import onnx

    proto = onnx.load(str(src))
    edit(proto)
    onnx.save(proto, str(dst))
    return dst


def _meta(value: str):
    def edit(proto):
        for entry in proto.metadata_props:
            if entry.key == META_SIDECAR:
                entry.value = value
    return edit


def _after(name: str, op: str, consts=(), last_dim: int | None = None):
    """An edit feeding the graph output ``name`` through ``op`` (constant inputs
    ``consts``), its declared last dimension set to ``last_dim``."""
    def edit(proto):
        from onnx import helper, numpy_helper

        g, inner = proto.graph, name + "_inner"
        for node in g.node:
            node.input[:] = [inner if i == name else i for i in node.input]
            node.output[:] = [inner if o == name else o for o in node.output]
        for info in g.value_info:
            if info.name == name:
                info.name = inner
        names = []
        for k, value in enumerate(consts):
            g.initializer.append(numpy_helper.from_array(np.asarray(value), f"{inner}{k}"))
            names.append(f"{inner}{k}")
        g.node.append(helper.make_node(op, [inner, *names], [name]))
        if last_dim is not None:
            out = next(o for o in g.output if o.name == name)
            out.type.tensor_type.shape.dim[-1].dim_value = last_dim
    return edit


def _third_output(proto):
    from onnx import TensorProto, helper

    proto.graph.node.append(helper.make_node("Identity", ["probabilities"], ["extra"]))
    proto.graph.output.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT,
                                                            ["batch", 5]))


@pytest.mark.parametrize("edit, fragment", [
    (_meta("{not json"), "koa_sidecar metadata is not valid JSON"),
    (_meta("[1, 2]"), "koa_sidecar metadata must be a JSON object, found a JSON list"),
    (_meta(json.dumps({"preprocess": {"size": 64, "crop": True, "clahe_clip": 2.0,
                                      "clahe_tiles": 0}})),
     "preprocess.clahe_tiles = 0: must be an integer >= 1"),
    (_third_output, "3 outputs"),
    (_after("gate", "Slice", ([0], [1], [1]), last_dim=1), "gate (batch, 1)"),
    (_after("probabilities", "Pad", (np.array([0, 0, 0, 2]),), last_dim=7),
     "probabilities (batch, 7)"),
    (_after("probabilities", "Mul", (np.float32(-2.85),)), "not probabilities"),
])
def test_a_hostile_onnx_file_is_one_line(tiny_onnx, tmp_path, edit, fragment):
    """Bad metadata gave tracebacks, three outputs or a one-column gate an IndexError, and
    scores that are not probabilities (or 7 classes of them) were graded as if they were."""
    pytest.importorskip("onnxruntime")
    path = _onnx(tiny_onnx, tmp_path / "hostile.onnx", edit)
    with pytest.raises(KoaError) as ei:
        backends.load_backend(path, "onnxruntime").predict(_views())
    _one_line(ei, fragment)


# ------------------------------------------------------------------ 5. an unwritable cache
def test_an_unwritable_onnx_cache_falls_back_to_torch_in_one_line(
        tiny_run, tmp_path, primed, monkeypatch, capsys):
    pytest.importorskip("onnxruntime")
    blocker = tmp_path / "a-file"
    blocker.write_text("the cache folder's parent is a file")
    monkeypatch.setenv("KOA_CACHE_DIR", str(blocker / "cache"))
    monkeypatch.delenv("KOA_ENGINE")  # the default engine, auto ...
    monkeypatch.setattr(backends.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(backends, "cpu_has_bf16", lambda: False)  # ... picks ONNX Runtime
    good = _png(tmp_path / "good.png", _knee(tiny_run))
    assert main(["predict", str(good), "--checkpoint", _ckpt(tiny_run), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)[0]["engine"] == "torch"
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "cannot write" in err[0] and "torch instead" in err[0], err


# ------------------------------------------------------------------ 6. calibrate, input-profile
def _checkpoint_copy(tiny_run, tmp_path) -> Path:
    return _copy(tiny_run, tmp_path / "cal.safetensors")


@pytest.mark.parametrize("keep", [1, 2])
def test_calibrate_refuses_too_few_validation_knees(tiny_run, phantom_copy, tmp_path, capsys,
                                                    keep):
    val = sorted((phantom_copy / "val").rglob("*.png"))
    for path in val[keep:]:
        path.unlink()
    ckpt = _checkpoint_copy(tiny_run, tmp_path)
    before = sidecar_path(ckpt).read_bytes()
    assert main(["calibrate", "--checkpoint", str(ckpt), "--data", str(phantom_copy),
                 "--engine", "torch", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs at least 5 validation knees" in err[0], err
    assert f"({keep} knee" in err[0]
    assert sidecar_path(ckpt).read_bytes() == before


def test_calibrate_refuses_a_temperature_that_worsens_ece(tiny_run, tmp_path, capsys,
                                                          monkeypatch):
    """Four knees right at confidence 0.5 and one confidently wrong: the NLL's temperature
    softens every knee, and the ECE on these knees rises from 0.52 to 0.58."""
    from koa_core.infer import evaluate

    def scores(member, records, *args, **kwargs):
        y = [r.grade for r in records]
        probs = np.full((len(y), 5), 0.125)
        probs[np.arange(len(y)), y] = 0.5
        probs[-1] = np.roll([0.001, 0.6, 0.3, 0.06, 0.039], y[-1])
        return probs.astype(np.float32), None

    monkeypatch.setattr(evaluate, "_member_predict", scores)
    ckpt = _checkpoint_copy(tiny_run, tmp_path)
    before = sidecar_path(ckpt).read_bytes()
    assert main(["calibrate", "--checkpoint", str(ckpt), "--data", str(tiny_run[1]),
                 "--engine", "torch", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "would worsen the expected calibration error" in err[0], err
    assert "ECE 0.5200 -> 0.5778" in err[0] and "not stored" in err[0]
    assert sidecar_path(ckpt).read_bytes() == before


def test_input_profile_refuses_blank_training_images(tiny_run, phantom_copy, tmp_path,
                                                     capsys):
    import cv2

    for path in (phantom_copy / "train").rglob("*.png"):
        cv2.imwrite(str(path), np.zeros((64, 64), np.uint8))
    ckpt = _checkpoint_copy(tiny_run, tmp_path)
    before = sidecar_path(ckpt).read_bytes()
    assert main(["input-profile", "--checkpoint", str(ckpt), "--data",
                 str(phantom_copy)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs at least 20 training images with contrast" in err[0], err
    assert "0 of the 45 drawn" in err[0]
    assert sidecar_path(ckpt).read_bytes() == before


def test_input_profile_leaves_blank_images_out_and_says_so(tiny_run, phantom_copy, tmp_path,
                                                          capsys):
    """Three blank crops among 45 drove the low-contrast threshold to zero: they are left
    out of the fit, counted, and named in what the profile was fitted on."""
    import cv2

    for path in sorted((phantom_copy / "train").rglob("*.png"))[:3]:
        cv2.imwrite(str(path), np.zeros((64, 64), np.uint8))
    ckpt = _checkpoint_copy(tiny_run, tmp_path)
    assert main(["input-profile", "--checkpoint", str(ckpt), "--data",
                 str(phantom_copy)]) == 0
    profile = read_sidecar(ckpt)["input_profile"]
    assert (profile["images"], profile["blank_left_out"]) == (42, 3)
    assert profile["min_std"] > 1 and "(3 blank ones left out)" in profile["what"]
    assert "(3 blank ones left out)" in capsys.readouterr().out
