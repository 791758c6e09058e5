"""The book's in-browser grader: the files behind "Grade your own knee" (book/grade.md).

The page runs the shipped checkpoint in the reader's browser with onnxruntime-web's
WebAssembly backend; nothing is uploaded. :func:`build_grader` writes everything the page
loads into ``HTML/grader/``, at build time and never committed:

- ``model.onnx``: the checkpoint exported by ``koa export --onnx``'s own function
  (:func:`koa_core.infer.onnx.export_onnx`, the float32 export that ``koa predict --engine
  onnxruntime`` caches), with its weights stored in int8 (:func:`int8_weights`): every
  weight matrix and convolution kernel is quantized per output channel, symmetrically, and
  turned back into float32 by a ``DequantizeLinear`` node, so the arithmetic stays float32.
  A quarter of the float32 file's size; the float32 model (54 MB) or float16-stored weights
  (27 MB) with the 15 MB runtime would exceed the page's 40 MB budget. The agreement with
  the float32 export on the book's 50 sample knees is measured at build time and shown on
  the page (and by ``scripts/bench_grader.py``);
- ``ort/``: onnxruntime-web's WebAssembly build, the exact version pinned by
  ``web/package-lock.json`` (``npm ci`` in ``web/``; ``make install`` runs it), copied from
  ``web/node_modules``: no CDN, so the page works offline and from any static host;
- the page's code (``web/src``, :data:`JS_FILES`): ``pipeline.mjs``, the grading pipeline
  without the page (no DOM, no state: from decoded pixels, grader.json's settings and an
  onnxruntime session to the views, the input check, the probabilities and the set of
  grades; Node runs it in the tests), built on ``imageops.mjs`` (the preprocessing),
  ``inputcheck.mjs`` (the input check) and ``conformal.mjs`` (the sets of grades by the rule
  of :mod:`koa_core.metrics.conformal`); ``grade.mjs``, the page (decoding in the browser,
  the DOM, its style, onnxruntime-web's session and the hooks the tests drive);
- ``grader.json``: what the pipeline reads (:func:`pipeline_config`: the checkpoint's
  preprocessing, input-check profile, temperature and sets from its sidecar; the decoders'
  pixel limit and DICOM suffixes, the input check's crop, thumbnail, tile grid and CLAHE
  twin, from the Python modules that define them), and what the page shows (the grade
  names, the input check's words, the reports' research-tool caveat, the model, the runtime
  and the list of sample knees);
- ``sample/``: the book's 50 sample knees (``book/sample``), one click each on the page.

:func:`stage_grader` is what ``koa book`` calls before building the HTML;
:func:`build_standalone` writes the page alone (the grader's tests, the benchmark).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from koa_core import GRADE_NAMES
from koa_core.data.imaging import DICOM_SUFFIXES, MAX_PIXELS, read_gray
from koa_core.data.inputcheck import FLAG_WORDS, GRID, SIZE, THUMB, TWIN_CLIP, TWIN_TILES
from koa_core.data.preprocess import Preprocessor
from koa_core.errors import KoaError
from koa_core.infer.knee_report import CAPTION_NO_CAM
from koa_core.infer.onnx import META_SIDECAR, export_onnx, onnx_cache_path, set_metadata
from koa_core.infer.profile import check_for
from koa_core.metrics.calibration import sidecar_temperature
from koa_core.metrics.conformal import Conformal
from koa_core.model.checkpoint import read_sidecar, resolve_checkpoint

__all__ = ["ORT_FILES", "PRECISION", "agreement", "build_grader", "build_standalone",
           "copy_runtime", "fp16_weights", "fp32_export", "grader_config", "int8_weights",
           "model_outputs", "page_snippet", "pipeline_config", "sample_files", "stage_grader",
           "write_model"]

REPO = Path(__file__).resolve().parents[2]
ORT_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
PRECISION = "int8 weights (per output channel), float32 arithmetic"
JS_FILES = ("grade.mjs", "pipeline.mjs", "imageops.mjs", "inputcheck.mjs", "conformal.mjs")
MARKERS = ("<!-- grader -->", "<!-- /grader -->")
_MIN_QUANTIZED = 4096  # smaller tensors (biases, norms) stay float32
MB = 1e6


def fp32_export(checkpoint: str | Path | None = None) -> Path:
    """The checkpoint's float32 ONNX export, made once by ``koa export --onnx``'s function
    and cached where ``koa predict --engine onnxruntime`` keeps it."""
    ckpt = resolve_checkpoint(checkpoint)
    target = onnx_cache_path(ckpt)
    if not target.exists():
        export_onnx(ckpt, target)
    return target


def _dequantized(init, name: str):
    """(int8 initializer, scale, zero point, DequantizeLinear node) for one float tensor."""
    from onnx import helper, numpy_helper

    w = numpy_helper.to_array(init).astype(np.float32)
    peak = np.abs(w.reshape(w.shape[0], -1)).max(axis=1)
    scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    shape = (-1,) + (1,) * (w.ndim - 1)
    q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
    tensors = [numpy_helper.from_array(q, f"{name}_q"),
               numpy_helper.from_array(scale, f"{name}_scale"),
               numpy_helper.from_array(np.zeros_like(scale, np.int8), f"{name}_zero")]
    node = helper.make_node("DequantizeLinear", [t.name for t in tensors], [name], axis=0,
                            name=f"{name}_dequantize")
    return tensors, node


def int8_weights(model) -> object:
    """The model with every float tensor of at least 4,096 values and two or more axes
    stored as int8, one scale per slice of its first axis (a kernel's or a weight row's
    output), dequantized to float32 by the graph itself."""
    from onnx import TensorProto

    keep, nodes = [], []
    for init in model.graph.initializer:
        if (init.data_type == TensorProto.FLOAT and len(init.dims) >= 2
                and int(np.prod(init.dims)) >= _MIN_QUANTIZED):
            tensors, node = _dequantized(init, init.name)
            keep += tensors
            nodes.append(node)
        else:
            keep.append(init)
    return _with_initializers(model, keep, nodes)


def _with_initializers(model, initializers: list, nodes: list) -> object:
    """The model with ``initializers`` in place of its own, and ``nodes`` (the ones that
    turn stored weights back into float32) run before every other node."""
    del model.graph.initializer[:]
    model.graph.initializer.extend(initializers)
    old = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes + old)
    return model


def fp16_weights(model) -> object:
    """The model with its float tensors stored as float16 and cast back to float32 (the
    alternative the benchmark measures: half the float32 size)."""
    from onnx import TensorProto, helper, numpy_helper

    keep, nodes = [], []
    for init in model.graph.initializer:
        if init.data_type != TensorProto.FLOAT:
            keep.append(init)
            continue
        half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16),
                                       f"{init.name}_fp16")
        keep.append(half)
        nodes.append(helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT))
    return _with_initializers(model, keep, nodes)


def write_model(out: str | Path, precision: str = "int8", checkpoint=None) -> Path:
    """Write the page's model: ``int8`` (the page's), ``fp16`` or ``fp32`` weights."""
    import onnx

    src = fp32_export(checkpoint)
    model = onnx.load(str(src))
    sidecar = json.loads({p.key: p.value for p in model.metadata_props}.get(META_SIDECAR, "{}"))
    convert = {"int8": int8_weights, "fp16": fp16_weights, "fp32": lambda m: m}
    if precision not in convert:
        raise KoaError(f"grader model precision must be one of {', '.join(convert)}")
    model = convert[precision](model)
    words = {"int8": PRECISION, "fp16": "float16 weights, float32 arithmetic", "fp32": "fp32"}
    set_metadata(model, sidecar, words[precision])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out))
    return out


def sample_files(root: str | Path | None = None) -> list[dict]:
    """The book's sample knees: [{"path", "name", "grade"}] from ``book/sample/SAMPLE.json``."""
    sample = Path(root or REPO) / "book" / "sample"
    try:
        listed = json.loads((sample / "SAMPLE.json").read_text())["files"]
    except (OSError, KeyError, ValueError):
        raise KoaError(f"{sample}: no readable SAMPLE.json (the book's sample knees)") from None
    return [{"path": sample / f["path"], "name": Path(f["path"]).name, "grade": int(f["grade"])}
            for f in listed]


def model_outputs(model: str | Path, paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, gate) of an ONNX file on image files, ONNX Runtime on the CPU, with the
    Python preprocessing the file's sidecar prescribes."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    meta = sess.get_modelmeta().custom_metadata_map
    pre = Preprocessor.from_sidecar(json.loads(meta[META_SIDECAR]))
    views = np.stack([np.stack(pre(read_gray(p))) for p in paths])
    out = [sess.run(None, {"views": views[i:i + 10]}) for i in range(0, len(views), 10)]
    return np.concatenate([o[0] for o in out]), np.concatenate([o[1] for o in out])


def agreement(model: str | Path, reference: str | Path, paths: list[Path]) -> dict:
    """How ``model`` agrees with ``reference`` (grades, largest probability difference)."""
    p, _ = model_outputs(model, paths)
    r, _ = model_outputs(reference, paths)
    return {"knees": len(paths), "same_grade": int((p.argmax(1) == r.argmax(1)).sum()),
            "max_probability_difference": float(np.abs(p - r).max())}


def copy_runtime(dest: Path, web: Path | None = None) -> dict:
    """Copy onnxruntime-web's WebAssembly files (``npm ci`` in ``web/``) into ``dest``."""
    pkg = Path(web or REPO / "web") / "node_modules" / "onnxruntime-web"
    if not all((pkg / "dist" / f).is_file() for f in ORT_FILES):
        raise KoaError(f"{pkg}: onnxruntime-web is not installed; run `npm ci` in web/ "
                       "(make install does)")
    dest.mkdir(parents=True, exist_ok=True)
    for f in ORT_FILES:
        shutil.copyfile(pkg / "dist" / f, dest / f)
    meta = json.loads((pkg / "package.json").read_text())
    version = meta["version"]
    (dest / "NOTICE.txt").write_text(f"onnxruntime-web {version} ({meta.get('license')} "
                                     "license, Microsoft Corporation), from npm.\n")
    size = sum((dest / f).stat().st_size for f in ORT_FILES)
    return {"package": "onnxruntime-web", "version": version, "megabytes": size / MB}


def _copy_samples(dest: Path, root: Path) -> list[dict]:
    readme = root / "book" / "sample" / "README.md"  # the sample's source and attribution
    (dest / "sample").mkdir(parents=True, exist_ok=True)
    if readme.is_file():
        shutil.copyfile(readme, dest / "sample" / "README.md")
    out = []
    for s in sample_files(root):
        rel = f"sample/{s['grade']}/{s['name']}"
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(s["path"], dest / rel)
        out.append({"file": rel, "name": s["name"], "grade": s["grade"]})
    return out


def _agreement_words(a: dict) -> str:
    return (f"On the book's {a['knees']} sample knees it gives the float32 model's grade for "
            f"{a['same_grade']} of {a['knees']}, probabilities within "
            f"{a['max_probability_difference']:.3f}.")


def _sets(sidecar: dict) -> dict | None:
    """The sidecar's conformal sets, checked, as the page reads them (None: no sets)."""
    entry = sidecar.get("conformal")
    return Conformal.from_dict(entry).to_dict() if entry else None


def pipeline_config(checkpoint: Path) -> dict:
    """The part of grader.json that the grading pipeline (``web/src/pipeline.mjs``) reads:
    the checkpoint's preprocessing, input-check profile, temperature and conformal sets
    (its sidecar), and the facts the Python modules define: the decoders' pixel limit and
    DICOM suffixes (:mod:`koa_core.data.raster`), the input check's crop side, thumbnail
    side, tile grid and CLAHE twin (:mod:`koa_core.data.inputcheck`)."""
    sidecar = read_sidecar(checkpoint)
    check = check_for(sidecar)
    if check is None:
        raise KoaError(f"{checkpoint}: no input profile for the page's input check (fit one "
                       "with koa input-profile)")
    return {"preprocess": sidecar["preprocess"], "input_profile": check.profile,
            "input_check": {"size": SIZE, "thumb": THUMB, "grid": GRID,
                            "twin_clip": TWIN_CLIP, "twin_tiles": TWIN_TILES},
            "decode": {"max_pixels": MAX_PIXELS, "dicom_suffixes": list(DICOM_SUFFIXES)},
            "temperature": sidecar_temperature(sidecar), "conformal": _sets(sidecar)}


def grader_config(checkpoint: Path, model: Path, runtime: dict, samples: list[dict],
                  measured: dict | None) -> dict:
    """grader.json: what the page needs, read from the sidecar and the Python modules."""
    return {"class_names": list(GRADE_NAMES), **pipeline_config(checkpoint),
            "flag_words": FLAG_WORDS, "caveat": CAPTION_NO_CAM,
            "model": {"file": model.name, "precision": PRECISION,
                      "megabytes": model.stat().st_size / MB, "checkpoint": checkpoint.name,
                      "agreement": _agreement_words(measured) if measured else "",
                      "measured": measured},
            "runtime": runtime, "samples": samples}


def build_grader(html_dir: str | Path, root: str | Path | None = None,
                 checkpoint: str | Path | None = None, measure: bool = True) -> Path:
    """Write the grader's files into ``html_dir/grader`` (see the module docstring); with
    ``measure``, the model's agreement with the float32 export on the sample is measured
    and stated on the page. Returns the folder."""
    root = Path(root or REPO)
    ckpt = resolve_checkpoint(checkpoint)
    dest = Path(html_dir) / "grader"
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    runtime = copy_runtime(dest / "ort", root / "web")
    for f in JS_FILES:
        shutil.copyfile(root / "web" / "src" / f, dest / f)
    model = write_model(dest / "model.onnx", "int8", ckpt)
    samples = _copy_samples(dest, root)
    measured = None
    if measure:
        measured = agreement(model, fp32_export(ckpt), [dest / s["file"] for s in samples])
    cfg = grader_config(ckpt, model, runtime, samples, measured)
    (dest / "grader.json").write_text(json.dumps(cfg, indent=1))
    return dest


def page_snippet(root: str | Path | None = None) -> str:
    """The HTML that book/grade.md places in the page (between its grader markers)."""
    text = (Path(root or REPO) / "book" / "grade.md").read_text()
    start, end = (text.find(m) for m in MARKERS)
    if start < 0 or end < start:
        raise KoaError("book/grade.md: no grader block (<!-- grader --> ... <!-- /grader -->)")
    return text[start:end + len(MARKERS[1])]


def build_standalone(out: str | Path, root: str | Path | None = None,
                     checkpoint: str | Path | None = None, measure: bool = False) -> Path:
    """The grader page alone: ``out/book/grade.html`` with the book's grader block, and
    ``out/grader/``, laid out as in the built book. Returns the page."""
    out = Path(out)
    build_grader(out, root, checkpoint, measure)
    page = out / "book" / "grade.html"
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                    "<title>Grade your own knee</title><link rel=\"icon\" href=\"data:,\">"
                    "</head>\n<body>\n"
                    f"{page_snippet(root)}\n</body></html>\n")
    return page


def stage_grader(root: str | Path, log=print) -> Path:
    """``koa book``'s step: the grader's files into ``ROOT/_build/html/grader``, which the
    HTML build leaves in place beside the pages."""
    dest = build_grader(Path(root) / "_build" / "html", root)
    cfg = json.loads((dest / "grader.json").read_text())
    log(f"koa book: grader page assets in {dest} (model {cfg['model']['megabytes']:.1f} MB, "
        f"runtime {cfg['runtime']['megabytes']:.1f} MB)")
    return dest
