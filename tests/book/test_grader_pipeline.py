"""The grader page's pipeline (web/src/pipeline.mjs) run by Node, against the Python it ports.

The pipeline has no DOM, so Node runs it on the settings the book writes into grader.json
(:func:`koa_core.book.grader.pipeline_config`): the book's 50 sample knees, decoded by
Python, go through its views, input check and model run, with a stand-in onnxruntime
session that records the tensor it is given and answers crafted probabilities. The model
input must be Python's (``Preprocessor``) byte for byte, the flags ``InputCheck``'s, and
the calibrated probabilities, grades and sets those of ``apply_temperature`` and
``Conformal.sets``; the sets' rule is also tried on crafted probabilities (ties, flat rows)
under every kind of calibration. The network itself is run by the Chromium test
(tests/report/test_grader.py), as the page runs it.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from koa_core.book.grader import pipeline_config, sample_files
from koa_core.data.imaging import DICOM_SUFFIXES, MAX_PIXELS, read_gray
from koa_core.data.inputcheck import InputCheck
from koa_core.data.preprocess import Preprocessor
from koa_core.metrics.calibration import apply_temperature
from koa_core.metrics.conformal import Conformal, set_label
from koa_core.model.checkpoint import DEFAULT_CHECKPOINT

NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed: the grader's "
                                "pipeline is not run")
SRC = Path(__file__).resolve().parents[2] / "web" / "src"

# Reads the request on stdin, writes the answers on stdout (images as base64).
DRIVER = r"""
import { readFileSync } from 'node:fs';
const req = JSON.parse(readFileSync(0, 'utf8'));
const P = await import(req.pipeline);
const cfg = req.cfg;
const grey = (t) => ({ width: t.w, height: t.h,
  data: Uint8Array.from(Buffer.from(t.b64, 'base64')) });
const b64 = (a) => Buffer.from(a.buffer, a.byteOffset, a.length).toString('base64');
class Tensor { constructor(type, data, dims) { Object.assign(this, { type, data, dims }); } }
const out = { graded: [], variants: [], flags: [], outcomes: [], refusals: [] };
for (const [i, img] of req.knees.entries()) {
  const feeds = [];
  const session = { run: async (f) => {
    feeds.push(f);
    return { probabilities: { data: Float32Array.from(req.answers[i].p) },
      gate: { data: Float32Array.from(req.answers[i].gate) } };
  } };
  const { result, v } = await P.gradeGrey({ session, Tensor }, grey(img), img.name, cfg);
  const t = feeds[0].views;
  out.graded.push({ result, runs: feeds.length, feeds: Object.keys(feeds[0]), type: t.type,
    dims: t.dims, input: b64(t.data), transformed: b64(v.transformed.data) });
}
for (const img of req.variants) {
  const v = P.views(grey(img), cfg.preprocess);
  out.variants.push({ transformed: b64(v.transformed.data), raw: b64(v.raw.data),
    clahe: b64(v.clahe.data), flags: P.checkInput(grey(img), cfg) });
}
for (const img of req.checked) out.flags.push(P.checkInput(grey(img), cfg));
for (const c of req.calibrations) {
  out.outcomes.push(req.probabilities.map((p) => P.outcome(Float32Array.from(p), null, c)));
}
for (const [w, h, name, head] of req.refusals) {
  const said = [];
  for (const f of [() => P.checkPixels(w, h, name, cfg.decode),
    () => P.refuseDicom(Buffer.from(head, 'base64'), name, cfg.decode)]) {
    try { f(); said.push(null); } catch (e) { said.push([e instanceof P.GraderError, e.message]); }
  }
  out.refusals.push(said);
}
process.stdout.write(JSON.stringify(out));
"""


def _img(x: np.ndarray, name: str = "") -> dict:
    x = np.ascontiguousarray(x, np.uint8)
    return {"w": x.shape[1], "h": x.shape[0], "name": name,
            "b64": base64.b64encode(x.tobytes()).decode()}


def _arr(text: str, shape) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), np.uint8).reshape(shape)


def _variants(img: np.ndarray) -> list[np.ndarray]:
    """The knee padded and not square (trimmed, cropped, then resized by non-integer
    factors), small (bilinear enlargement), twice the size (area by an integer factor),
    odd sides (CLAHE tiles that do not divide them)."""
    padded = np.pad(img, ((12, 30), (26, 4)))
    return [cv2.resize(padded, (300, 262), interpolation=cv2.INTER_LINEAR),
            cv2.resize(padded, (360, 330), interpolation=cv2.INTER_LINEAR),
            cv2.resize(img, (150, 171), interpolation=cv2.INTER_AREA),
            cv2.resize(img, (448, 448), interpolation=cv2.INTER_LINEAR),
            cv2.resize(img, (229, 301), interpolation=cv2.INTER_LINEAR)]


def _crafted_probabilities(rng) -> np.ndarray:
    ties = [[0.2] * 5, [0.1, 0.3, 0.2, 0.3, 0.1], [0.05, 0.3, 0.3, 0.3, 0.05],
            [0.4, 0.1, 0.0, 0.1, 0.4], [0.0, 0.0, 1.0, 0.0, 0.0], [0.25, 0.25, 0.0, 0.25, 0.25],
            [0.1, 0.2, 0.4, 0.2, 0.1], [0.15, 0.25, 0.35, 0.25, 0.0]]  # neighbours tied
    return np.vstack([np.array(ties, np.float32),
                      rng.dirichlet(np.full(5, 0.7), 200).astype(np.float32)])


CALIBRATIONS = [  # (temperature, conformal): every kind of set, and none
    (None, None),
    (1.7, {"method": "lac", "coverage": 0.9, "class_conditional": False,
           "thresholds": [0.8], "n": 500}),
    (0.6, {"method": "lac", "coverage": 0.8, "class_conditional": True,
           "thresholds": [0.7, 0.9, None, 0.5, 0.95], "n": 500}),
    (None, {"method": "ordinal", "coverage": 0.9, "class_conditional": False,
            "thresholds": [0.85], "n": 500}),
    (None, {"method": "ordinal", "coverage": 0.7, "class_conditional": False,
            "thresholds": [0.7], "n": 500}),  # a tie's side decides the set
    (1.2, {"method": "ordinal", "coverage": 0.9, "class_conditional": True,
           "thresholds": [0.6, None, 0.9, 0.99, 0.75], "n": 500}),
]


def _expected(p: np.ndarray, t: float | None, conformal: dict | None) -> dict:
    """What koa predict makes of the network's probabilities ``p`` (float64 arithmetic)."""
    q = apply_temperature(p[None].astype(np.float64), t)[0] if t else p.astype(np.float64)
    out = {"probabilities": q, "grade": int(q.argmax()), "set": None, "setLabel": None}
    if conformal:
        row = Conformal.from_dict(conformal).sets(q[None])[0]
        out.update(set=np.flatnonzero(row).tolist(), setLabel=set_label(row))
    return out


def _same(got: dict, want: dict) -> bool:
    return (np.allclose(got["probabilities"], want["probabilities"], rtol=0, atol=1e-12)
            and got["grade"] == want["grade"] and got["set"] == want["set"]
            and got["setLabel"] == want["setLabel"])


@pytest.fixture(scope="module")
def run():
    """The request (Python's inputs and references) and Node's answers, in one Node run."""
    cfg = json.loads(json.dumps(pipeline_config(DEFAULT_CHECKPOINT)))  # as grader.json has it
    rng = np.random.default_rng(0)
    samples = sample_files()
    knees = [read_gray(s["path"]) for s in samples]
    answers = [{"p": p.tolist(), "gate": g.tolist()} for p, g in
               zip(rng.dirichlet(np.ones(5), len(knees)).astype(np.float32),
                   rng.dirichlet(np.ones(2), len(knees)).astype(np.float32))]
    twins = [cv2.createCLAHE(clipLimit=5.0, tileGridSize=(8, 8)).apply(x) for x in knees]
    checked = twins + [np.hstack(knees[:2]), 255 - knees[2]]  # both knees; bone dark
    probabilities = _crafted_probabilities(rng)
    calibrations = [{**cfg, "temperature": t, "conformal": c} for t, c in CALIBRATIONS]
    refusals = [(8000, 8000, "big.png", ""), (8001, 8000, "bigger.png", ""),
                (10, 10, "scan.DCM", ""), (10, 10, "scan", base64.b64encode(
                    b"\0" * 128 + b"DICM").decode()), (10, 10, "knee.png", "")]
    req = {"pipeline": (SRC / "pipeline.mjs").as_uri(), "cfg": cfg,
           "knees": [_img(x, s["name"]) for x, s in zip(knees, samples)], "answers": answers,
           "variants": [_img(x) for x in _variants(knees[0])],
           "checked": [_img(x) for x in checked], "probabilities": probabilities.tolist(),
           "calibrations": calibrations, "refusals": refusals}
    proc = subprocess.run([NODE, "--input-type=module", "-e", DRIVER], input=json.dumps(req),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout)
    return {"cfg": cfg, "knees": knees, "answers": answers, "variants": _variants(knees[0]),
            "checked": checked, "probabilities": probabilities, "calibrations": calibrations,
            "refusals": refusals, "samples": samples}, got


def test_the_model_input_is_the_python_preprocessing_byte_for_byte(run):
    req, got = run
    pre = Preprocessor.from_sidecar({"preprocess": req["cfg"]["preprocess"]})
    s = pre.size
    assert len(got["graded"]) == len(req["knees"]) == 50
    for x, g in zip(req["knees"], got["graded"]):
        assert (g["runs"], g["feeds"], g["type"], g["dims"]) == (1, ["views"], "uint8",
                                                                 [1, 2, s, s])
        want = np.stack(pre(x))[None]  # what koa predict gives the network
        assert np.array_equal(_arr(g["input"], want.shape), want), g["result"]["name"]
        assert np.array_equal(_arr(g["transformed"], x.shape), pre.transform_input(x))


def test_views_of_other_geometries_are_within_one_grey_level(run):
    req, got = run
    pre = Preprocessor.from_sidecar({"preprocess": req["cfg"]["preprocess"]})
    diffs = []
    for x, g in zip(req["variants"], got["variants"]):
        transformed = pre.transform_input(x)
        raw, clahe = pre.paper_views(transformed)
        for name, want in (("transformed", transformed), ("raw", raw), ("clahe", clahe)):
            diffs.append(np.abs(_arr(g[name], want.shape).astype(int) - want).ravel())
    d = np.concatenate(diffs)
    assert (d <= 1).mean() >= 0.999, f"{(d <= 1).mean():.5f} within one level (max {d.max()})"


def test_the_input_check_flags_what_python_flags(run):
    req, got = run
    check = InputCheck(req["cfg"]["input_profile"], "shipped")
    assert [g["result"]["flags"] for g in got["graded"]] == [check.flags(x)
                                                             for x in req["knees"]]
    assert got["flags"] == [check.flags(x) for x in req["checked"]]
    assert [g["flags"] for g in got["variants"]] == [check.flags(x) for x in req["variants"]]
    assert sum("enhanced" in f for f in got["flags"][:50]) >= 45  # the twins look enhanced
    assert "not-a-knee-crop" in got["flags"][50] and "inverted" in got["flags"][51]


def test_the_graded_result_is_koa_predicts_on_the_same_probabilities(run):
    req, got = run
    cfg = req["cfg"]
    for a, g, s in zip(req["answers"], got["graded"], req["samples"]):
        r = g["result"]
        assert r["name"] == s["name"]
        p = np.array(a["p"], np.float32)
        assert _same(r, _expected(p, cfg["temperature"], cfg["conformal"])), r
        assert np.array_equal(np.array(r["gate"]), np.array(a["gate"], np.float32))


def test_sets_and_calibration_follow_the_python_rule_on_crafted_probabilities(run):
    req, got = run
    assert len(got["outcomes"]) == len(CALIBRATIONS)
    for c, outcomes in zip(req["calibrations"], got["outcomes"]):
        wrong = [(p.tolist(), o) for p, o in zip(req["probabilities"], outcomes)
                 if not _same(o, _expected(p, c["temperature"], c["conformal"]))]
        assert wrong == [], (c["temperature"], c["conformal"], wrong[:3])
        assert all(o["gate"] is None for o in outcomes)
    sizes = {len(o["set"]) for outcomes in got["outcomes"][1:] for o in outcomes}
    assert len(sizes) >= 4  # the crafted rows give sets of many sizes


def test_refusals_use_the_decoders_limit_and_dicom_suffixes(run):
    req, got = run
    assert req["cfg"]["decode"] == {"max_pixels": MAX_PIXELS,
                                    "dicom_suffixes": list(DICOM_SUFFIXES)}
    limit = f"{MAX_PIXELS:,}-pixel limit."
    assert got["refusals"] == [
        [None, None],
        [[True, f"bigger.png: 8001x8000 pixels is larger than the {limit}"], None],
        [None, [True, "scan.DCM: DICOM files are graded by koa predict, not on this page "
                "(export the image as PNG to grade it here)."]],
        [None, [True, "scan: DICOM files are graded by koa predict, not on this page "
                "(export the image as PNG to grade it here)."]],
        [None, None]]
    assert 8000 * 8000 == MAX_PIXELS  # the first is at the limit, the second over it


def _code(name: str) -> str:
    """A module of web/src without its comments."""
    text = re.sub(r"/\*.*?\*/", "", (SRC / name).read_text(), flags=re.S)
    return "\n".join(line.split("//")[0] for line in text.splitlines())


def test_the_pipeline_has_no_dom_no_state_and_no_copied_settings():
    """The pipeline touches no page (Node ran it) and keeps no state of its own; it and the
    page read every setting from grader.json rather than copying Python's numbers."""
    pipeline = _code("pipeline.mjs") + _code("inputcheck.mjs")
    assert not re.findall(r"\b(document|window|createImageBitmap|fetch|ort)\b", pipeline)
    assert not re.findall(r"^(let|var|const) ", pipeline, flags=re.M)  # module-level state
    page = pipeline + _code("grade.mjs")
    copied = [m.group() for m in re.finditer(r"\b(64000000|224|32|5\.0)\b|\.dcm\b", page)]
    assert copied == []
