"""Inference backends: the torch model, and ONNX Runtime for fast CPUs (paper §3.1 inference).

Every backend answers one question the same way: for ``(N, 2, S, S)`` uint8 views (raw,
CLAHE) give the class probabilities ``(N, 5)`` and the fusion gates ``(N, 2)`` (None for a
single-stream model), both float32 whatever precision ran the network, optionally averaged
with each knee's left-right mirror (``tta="flip"``), and the probabilities scaled by the
temperature in the checkpoint's sidecar where ``koa calibrate`` fitted one.

* :class:`TorchBackend` runs the checkpoint's model (channels_last; bf16 autocast where
  the CPU or GPU has native bf16, else fp32).
* :class:`OrtBackend` runs an ONNX file written by :func:`~koa_core.infer.onnx.export_onnx`
  (fp32, or int8 from :func:`~koa_core.infer.onnx.quantize_int8`), whose metadata carries
  the checkpoint's sidecar, so the pixels match training exactly as with the safetensors
  checkpoint. That metadata is checked as a checkpoint's sidecar is, the file's input and
  outputs against what the exporter writes, and every output it gives against being
  probabilities (finite, in [0, 1], rows summing to 1), all in one line when refused.

:func:`load_backend` is the one owner of the engine names (:data:`ENGINES`) and of the
choice ``auto`` makes. Every engine runs a safetensors checkpoint only after
:func:`~koa_core.model.checkpoint.check_checkpoint`; the ONNX export is cached under the
weights' own SHA-256, and a cache that cannot be written means torch runs instead, said in
one line on stderr. The ONNX functions are re-exported here for callers that hold a
backend and need the file it runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from koa_core.config import ENGINES
from koa_core.errors import KoaError
from koa_core.infer.onnx import (
    META_QUANT,
    META_SIDECAR,
    OnnxWriteError,
    calibration_views,
    export_onnx,
    onnx_cache_path,
    quantize_int8,
)
from koa_core.metrics.calibration import apply_temperature, sidecar_temperature
from koa_core.metrics.conformal import Conformal
from koa_core.model.checkpoint import check_checkpoint, check_sidecar, load_checkpoint
from koa_core.model.inference import check_tta, predict_views
from koa_core.runtime import amp_dtype, cpu_has_bf16, require, resolve_device

__all__ = ["ENGINES", "OrtBackend", "TorchBackend", "calibration_views", "export_onnx",
           "load_backend", "onnx_cache_path", "quantize_int8", "resolve_engine"]

# What koa export --onnx writes: one uint8 input and these outputs, (batch, width) each;
# the gate only for a dual-stream model.
INPUT = "views"
OUTPUTS = (("probabilities", 5), ("gate", 2))
SUM_TOLERANCE = 1e-3  # a softmax row sums to 1 within float error, int8 files included


class _Calibrated:
    """What every backend shares: the sidecar's fitted temperature (``koa calibrate``),
    applied to the probabilities it reports unless ``calibrated`` is set False."""

    sidecar: dict
    calibrated = True

    @property
    def temperature(self) -> float | None:
        """The temperature applied to this backend's probabilities (None: plain softmax)."""
        return sidecar_temperature(self.sidecar) if self.calibrated else None

    @property
    def conformal(self) -> Conformal | None:
        """The sets of grades ``koa calibrate`` fitted on its temperature-scaled
        probabilities (None: none stored, or the plain softmax asked for)."""
        entry = self.sidecar.get("conformal")
        return Conformal.from_dict(entry) if entry and self.calibrated else None

    def _scaled(self, probs: np.ndarray) -> np.ndarray:
        t = self.temperature
        if t is None or not len(probs):
            return probs

        return apply_temperature(probs, t).astype(np.float32)


class TorchBackend(_Calibrated):
    """A checkpoint's model run by torch on ``device`` (default: the GPU if any)."""

    engine = "torch"

    def __init__(self, checkpoint: str | Path, device: str | torch.device | None = None):
        self.device = torch.device(device) if device else resolve_device()
        self.dtype = amp_dtype("auto", self.device)
        model, self.sidecar = load_checkpoint(checkpoint, self.device)
        self.model = model.to(memory_format=torch.channels_last)
        self.checkpoint = Path(checkpoint)
        self.precision = "bf16 autocast" if self.dtype is not None else "fp32"
        self.cam_model = self.model  # Grad-CAM (koa_core.infer.explain) runs on the same model

    def predict(self, views, batch_size: int = 64, tta: str | None = None):
        p, g = predict_views(self.model, views, batch_size, self.device, self.dtype,
                             channels_last=True, tta=tta)
        return self._scaled(p), g


def _session(path: Path, threads: int | None):
    ort = require("onnxruntime", "--engine onnxruntime")
    if not path.is_file():
        raise KoaError(f"{path}: no such ONNX file")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise KoaError(f"{path}: not a readable ONNX model ({first[:200]})") from None


def _metadata_sidecar(path: Path, meta: dict) -> dict:
    """The checkpoint sidecar an ONNX file carries, checked as a checkpoint's is."""
    if META_SIDECAR not in meta:
        raise KoaError(f"{path}: not an ONNX file written by koa export --onnx "
                       "(no koa_sidecar metadata)")
    try:
        side = json.loads(meta[META_SIDECAR])
    except ValueError as exc:
        raise KoaError(f"{path}: its koa_sidecar metadata is not valid JSON ({exc})") from None
    if not isinstance(side, dict):
        raise KoaError(f"{path}: its koa_sidecar metadata must be a JSON object, found a "
                       f"JSON {type(side).__name__}")
    return side


def _shape(dims) -> str:
    return "(" + ", ".join(str(d) for d in dims) + ")"


def _check_signature(path: Path, session, side: dict) -> int:
    """The sidecar's settings in their ranges, and the input and outputs koa export --onnx
    writes for its model, declared as such (a dimension left symbolic is checked on every
    run); returns the input size."""
    dual = check_sidecar(side, f"{path} (koa_sidecar metadata)").model.streams == "dual"
    want = OUTPUTS[:1 + dual]
    outs = [(o.name, list(o.shape)) for o in session.get_outputs()]
    if len(outs) != len(want) or any(
            name != w or len(dims) != 2 or (isinstance(dims[1], int) and dims[1] != width)
            for (name, dims), (w, width) in zip(outs, want)):
        listed = ", ".join(f"{name} {_shape(dims)}" for name, dims in outs)
        raise KoaError(f"{path}: its {len(outs)} output{'s' * (len(outs) != 1)} "
                       f"({listed}) are not what koa export --onnx writes for this model: "
                       + " and ".join(f"{w} (batch, {width})" for w, width in want))
    ins = session.get_inputs()
    size = (side.get("preprocess") or {}).get("size", 224)
    dims = list(ins[0].shape) if len(ins) == 1 else []
    if len(ins) != 1 or ins[0].name != INPUT or len(dims) != 4 or dims[1] != 2 or any(
            isinstance(d, int) and d != size for d in dims[2:]):
        listed = ", ".join(f"{i.name} {_shape(i.shape)}" for i in ins)
        raise KoaError(f"{path}: its inputs ({listed}) are not what koa export --onnx "
                       f"writes for this model: views (batch, 2, {size}, {size})")
    return size


def _probabilities(path: Path, name: str, values, width: int) -> np.ndarray:
    """An output checked to be ``width`` probabilities a row: in [0, 1], summing to 1. A
    row of NaN is left for the caller to report as that knee's error."""
    values = np.asarray(values, np.float32)
    if values.ndim != 2 or values.shape[1] != width:
        raise KoaError(f"{path}: its {name} output has shape {_shape(values.shape)}, not "
                       f"(batch, {width}); refused")
    rows = values[~np.isnan(values).any(axis=1)]
    if len(rows) and (not np.isfinite(rows).all() or rows.min() < 0 or rows.max() > 1
                      or np.abs(rows.sum(axis=1) - 1).max() > SUM_TOLERANCE):
        raise KoaError(f"{path}: its {name} output is not probabilities (values from "
                       f"{rows.min():.3g} to {rows.max():.3g}, rows summing to "
                       f"{rows.sum(axis=1).min():.3g}-{rows.sum(axis=1).max():.3g}); refused")
    return values


class OrtBackend(_Calibrated):
    """An ONNX file written by :func:`export_onnx`, run by ONNX Runtime on the CPU. Its
    metadata (the checkpoint's sidecar, range-checked), its input and outputs, and what it
    gives for a blank knee are checked when it is loaded; every output it gives is
    checked to be probabilities."""

    engine = "onnxruntime"

    def __init__(self, path: str | Path, threads: int | None = None):
        path = Path(path)
        self.session = _session(path, threads)
        meta = self.session.get_modelmeta().custom_metadata_map
        self.sidecar = _metadata_sidecar(path, meta)
        self.quantization = meta.get(META_QUANT, "fp32")
        self.precision = "onnxruntime " + ("int8" if self.quantization.startswith("int8")
                                           else "fp32")
        self.checkpoint = path
        self.source: Path | None = None  # the safetensors checkpoint it was exported from
        self._cam_model = None
        size = _check_signature(path, self.session, self.sidecar)
        self._gated = len(self.session.get_outputs()) == 2
        probe, _ = self._run(np.zeros((1, 2, size, size), np.uint8))
        if not np.isfinite(probe).all():
            raise KoaError(f"{path}: its probabilities for a blank image are not finite "
                           "(NaN); refused")

    @property
    def cam_model(self):
        """The source checkpoint's torch model for Grad-CAM (gradients), or None when only
        the ONNX file is known."""
        if self._cam_model is None and self.source is not None:
            self._cam_model = load_checkpoint(self.source)[0].float()
        return self._cam_model

    def _run(self, x: np.ndarray):
        try:
            out = self.session.run(None, {INPUT: x})
        except Exception as exc:  # onnxruntime's own types: a graph that cannot run
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else "failed"
            raise KoaError(f"{self.checkpoint}: ONNX Runtime could not run it "
                           f"({first[:200]})") from None
        probs = _probabilities(self.checkpoint, "probabilities", out[0], OUTPUTS[0][1])
        gate = (_probabilities(self.checkpoint, "gate", out[1], OUTPUTS[1][1])
                if self._gated else None)
        return probs, gate

    def predict(self, views, batch_size: int = 64, tta: str | None = None):
        check_tta(tta)
        probs, gates = [], []
        for i in range(0, len(views), batch_size):
            x = np.ascontiguousarray(views[i:i + batch_size], dtype=np.uint8)
            p, g = self._run(x)
            if tta == "flip":
                pf, gf = self._run(np.ascontiguousarray(x[..., ::-1]))
                p = (p + pf) / 2
                g = (g + gf) / 2 if g is not None else None
            probs.append(p.astype(np.float32))
            if g is not None:
                gates.append(g.astype(np.float32))
        if not probs:
            return np.zeros((0, 5), np.float32), None
        return (self._scaled(np.concatenate(probs)),
                np.concatenate(gates) if gates else None)


def resolve_engine(engine: str) -> str:
    """``auto``: torch on a GPU or a CPU with native bf16 (AMX, AVX512-BF16), where it is the
    faster; else ONNX Runtime fp32, which gives the same grades faster on plain AVX2 CPUs
    (``koa bench --onnx``), when its packages are installed. Other names pass through."""
    if engine != "auto":
        return engine

    if torch.cuda.is_available() or cpu_has_bf16():
        return "torch"
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        return "torch"
    return "onnxruntime"


class _CacheUnwritable(KoaError):
    """The ONNX export cannot be written to the cache (its folder, a full disk)."""


def _unwritable(folder: Path) -> str | None:
    """Why nothing can be written in ``folder`` (made if missing), or None."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".koa-probe.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def load_backend(checkpoint: str | Path, engine: str = "torch",
                 device: str | torch.device | None = None,
                 cache_dir: str | Path | None = None):
    """The backend for ``engine`` (torch, onnxruntime, onnxruntime-int8).

    An ``.onnx`` checkpoint always runs on ONNX Runtime. A safetensors checkpoint goes
    through :func:`~koa_core.model.checkpoint.check_checkpoint` on every engine; with
    ``onnxruntime`` it is exported once to the cache (keyed by the weights' own SHA-256)
    and that export runs, or torch runs it, saying so in one line on stderr, when the
    cache cannot be written. ``onnxruntime-int8`` needs calibration images, so it takes an
    ONNX file made by ``koa export --onnx --int8 --calibrate ROOT``; ``auto``:
    :func:`resolve_engine`."""
    if engine not in ENGINES:
        raise KoaError(f"--engine: {engine!r} is not one of {', '.join(ENGINES)}")
    path = Path(checkpoint)
    if path.suffix.lower() == ".onnx":  # whatever the engine: the file says what it is
        backend = OrtBackend(path)
        if engine == "onnxruntime-int8" and not backend.precision.endswith("int8"):
            raise KoaError(f"{path}: is a float32 ONNX file; --engine onnxruntime-int8 needs "
                           "one written by koa export --onnx --int8")
        return backend
    engine = resolve_engine(engine)
    if engine == "torch":
        return TorchBackend(path, device)
    if engine == "onnxruntime-int8":
        raise KoaError("--engine onnxruntime-int8 needs an int8 ONNX file as --checkpoint "
                       "(calibrated on training knees): koa export --onnx --int8 --calibrate "
                       "ROOT --out model-int8.onnx")
    checked = check_checkpoint(path)
    try:
        backend = _cached_export(path, onnx_cache_path(path, cache_dir, checked.digest))
    except _CacheUnwritable as exc:
        print(f"koa: {exc}; grading with torch instead", file=sys.stderr, flush=True)
        return TorchBackend(path, device)
    backend.source = path
    # the checkpoint's own sidecar, not the copy frozen into the cached export: a
    # temperature fitted after the export was cached still applies
    backend.sidecar = checked.sidecar
    return backend


def _cached_export(path: Path, target: Path) -> OrtBackend:
    """The cached ONNX export of ``path``, made once; a cached file that ONNX Runtime
    cannot read (a damaged or foreign file in the cache) is exported again, once. A cache
    that cannot take the export raises :class:`_CacheUnwritable` before exporting."""
    again = target.exists()
    if again:
        try:
            return OrtBackend(target)
        except KoaError as exc:
            print(f"koa: the cached ONNX export {target} is unreadable "
                  f"({str(exc).split(': ', 1)[-1]}); exporting it again", file=sys.stderr,
                  flush=True)
            with contextlib.suppress(OSError):
                target.unlink()
    problem = _unwritable(target.parent)
    if problem:
        raise _CacheUnwritable(f"cannot write the ONNX export of {path.name} to "
                               f"{target.parent} ({problem})")
    if not again:
        print(f"koa: exporting {path.name} to ONNX for ONNX Runtime, once (cached as "
              f"{target})", file=sys.stderr, flush=True)
    try:
        export_onnx(path, target)
    except OnnxWriteError as exc:
        raise _CacheUnwritable(str(exc)) from None
    return OrtBackend(target)
