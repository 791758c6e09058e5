"""The grader page's build step without a browser (koa_core/book/grader.py): the int8
weight storage, the files the page loads, and the clear errors when a piece is missing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from koa_core.book.grader import (
    JS_FILES,
    ORT_FILES,
    build_grader,
    copy_runtime,
    int8_weights,
    page_snippet,
    sample_files,
)
from koa_core.data.imaging import MAX_PIXELS
from koa_core.data.inputcheck import SIZE, THUMB
from koa_core.errors import KoaError
from koa_core.infer.knee_report import CAPTION_NO_CAM
from koa_core.model.checkpoint import DEFAULT_CHECKPOINT, read_sidecar

REPO = Path(__file__).resolve().parents[2]


def _tiny_model(w: np.ndarray, b: np.ndarray):
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Add", ["xw", "b"],
                                                                         ["y"])],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, w.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, w.shape[1]])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def _run(model, x):
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def test_int8_weights_store_int8_and_keep_the_arithmetic_float():
    pytest.importorskip("onnx")
    from onnx import TensorProto

    rng = np.random.default_rng(0)
    w = rng.normal(size=(128, 64)).astype(np.float32)
    b = rng.normal(size=64).astype(np.float32)
    x = rng.normal(size=(1, 128)).astype(np.float32)
    want = _run(_tiny_model(w, b), x)
    q = int8_weights(_tiny_model(w, b))
    kinds = {i.name: i.data_type for i in q.graph.initializer}
    assert kinds["w_q"] == TensorProto.INT8 and "w" not in kinds
    assert kinds["b"] == TensorProto.FLOAT  # small tensors stay float32
    assert [n.op_type for n in q.graph.node][0] == "DequantizeLinear"
    got = _run(q, x)
    assert np.abs(got - want).max() < 0.02 * np.abs(want).max()
    assert not np.array_equal(got, want)  # really quantized


def test_page_snippet_is_the_book_pages_grader_block(tmp_path):
    snippet = page_snippet()
    assert snippet.startswith("<!-- grader -->") and snippet.endswith("<!-- /grader -->")
    assert 'id="koa-grader"' in snippet and 'src="../grader/grade.mjs"' in snippet
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "grade.md").write_text("# A page without the grader\n")
    with pytest.raises(KoaError, match="no grader block"):
        page_snippet(tmp_path)


def test_every_module_of_web_src_ships_with_the_page():
    assert sorted(JS_FILES) == sorted(p.name for p in (REPO / "web" / "src").glob("*.mjs"))


def test_a_missing_runtime_says_to_run_npm_ci(tmp_path):
    with pytest.raises(KoaError, match="npm ci"):
        copy_runtime(tmp_path / "ort", web=tmp_path)


def test_the_npm_package_is_pinned_exactly():
    pkg = json.loads((REPO / "web" / "package.json").read_text())
    lock = json.loads((REPO / "web" / "package-lock.json").read_text())
    version = pkg["dependencies"]["onnxruntime-web"]
    assert version[0].isdigit(), "an exact version, no range"
    assert lock["packages"]["node_modules/onnxruntime-web"]["version"] == version


@pytest.mark.slow
def test_build_writes_what_the_page_loads(tmp_path):
    if not (REPO / "web" / "node_modules" / "onnxruntime-web").is_dir():
        pytest.fail("web/node_modules is missing: run `npm ci` in web/ (make install does)")
    dest = build_grader(tmp_path, measure=False)
    cfg = json.loads((dest / "grader.json").read_text())
    side = read_sidecar(DEFAULT_CHECKPOINT)
    assert cfg["preprocess"] == side["preprocess"]
    assert cfg["input_profile"] == side["input_profile"]
    assert cfg["caveat"] == CAPTION_NO_CAM
    assert cfg["decode"]["max_pixels"] == MAX_PIXELS
    assert (cfg["input_check"]["size"], cfg["input_check"]["thumb"]) == (SIZE, THUMB)
    assert all((dest / f).read_bytes() == (REPO / "web" / "src" / f).read_bytes()
               for f in JS_FILES)
    assert [s["name"] for s in cfg["samples"]] == [s["name"] for s in sample_files()]
    assert all((dest / s["file"]).is_file() for s in cfg["samples"])
    assert all((dest / "ort" / f).is_file() for f in ORT_FILES)
    runtime = sum((dest / "ort" / f).stat().st_size for f in ORT_FILES)
    model = (dest / "model.onnx").stat().st_size
    assert model + runtime <= 40e6, (model, runtime)  # the page's size budget
    assert cfg["model"]["megabytes"] == model / 1e6
