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
  checkpoint.

:func:`load_backend` is the one owner of the engine names (:data:`ENGINES`) and of the
choice ``auto`` makes. The ONNX functions are re-exported here for callers that hold a
backend and need the file it runs.
"""

from __future__ import annotations

import contextlib

import json
import sys
from pathlib import Path

import numpy as np
import torch

from koa_core.config import ENGINES
from koa_core.errors import KoaError
from koa_core.infer.onnx import (META_QUANT, META_SIDECAR, calibration_views, export_onnx,
                                 onnx_cache_path, quantize_int8)
from koa_core.metrics.calibration import apply_temperature, sidecar_temperature
from koa_core.model.checkpoint import load_checkpoint, read_sidecar
from koa_core.model.inference import check_tta, predict_views
from koa_core.runtime import amp_dtype, cpu_has_bf16, require, resolve_device

__all__ = ["ENGINES", "OrtBackend", "TorchBackend", "calibration_views", "export_onnx",
           "load_backend", "onnx_cache_path", "quantize_int8", "resolve_engine"]



class _Calibrated:
    """What every backend shares: the sidecar's fitted temperature (``koa calibrate``),
    applied to the probabilities it reports unless ``calibrated`` is set False."""

    sidecar: dict
    calibrated = True

    @property
    def temperature(self) -> float | None:
        """The temperature applied to this backend's probabilities (None: plain softmax)."""
        return sidecar_temperature(self.sidecar) if self.calibrated else None

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


class OrtBackend(_Calibrated):
    """An ONNX file written by :func:`export_onnx`, run by ONNX Runtime on the CPU."""

    engine = "onnxruntime"

    def __init__(self, path: str | Path, threads: int | None = None):
        ort = require("onnxruntime", "--engine onnxruntime")
        path = Path(path)
        if not path.is_file():
            raise KoaError(f"{path}: no such ONNX file")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), opts,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise KoaError(f"{path}: not a readable ONNX model ({first[:200]})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if META_SIDECAR not in meta:
            raise KoaError(f"{path}: not an ONNX file written by koa export --onnx "
                           "(no koa_sidecar metadata)")
        self.sidecar = json.loads(meta[META_SIDECAR])
        self.quantization = meta.get(META_QUANT, "fp32")
        self.precision = "onnxruntime " + ("int8" if self.quantization.startswith("int8")
                                           else "fp32")
        self.checkpoint = path
        self.source: Path | None = None  # the safetensors checkpoint it was exported from
        self._cam_model = None
        self._gated = len(self.session.get_outputs()) == 2

    @property
    def cam_model(self):
        """The source checkpoint's torch model for Grad-CAM (gradients), or None when only
        the ONNX file is known."""
        if self._cam_model is None and self.source is not None:
            self._cam_model = load_checkpoint(self.source)[0].float()
        return self._cam_model

    def _run(self, x: np.ndarray):
        out = self.session.run(None, {"views": x})
        return out[0], (out[1] if self._gated else None)

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


def load_backend(checkpoint: str | Path, engine: str = "torch",
                 device: str | torch.device | None = None,
                 cache_dir: str | Path | None = None):
    """The backend for ``engine`` (torch, onnxruntime, onnxruntime-int8).

    An ``.onnx`` checkpoint always runs on ONNX Runtime. ``onnxruntime`` with a safetensors
    checkpoint exports it once to the cache (keyed by its weights' digest) and runs that;
    ``onnxruntime-int8`` needs calibration images, so it takes an ONNX file made by
    ``koa export --onnx --int8 --calibrate ROOT``; ``auto``: :func:`resolve_engine`."""
    if engine not in ENGINES:
        raise KoaError(f"--engine: {engine!r} is not one of {', '.join(ENGINES)}")
    path = Path(checkpoint)
    if path.suffix.lower() != ".onnx":
        engine = resolve_engine(engine)
    if path.suffix.lower() == ".onnx":  # whatever the engine: the file says what it is
        backend = OrtBackend(path)
        if engine == "onnxruntime-int8" and not backend.precision.endswith("int8"):
            raise KoaError(f"{path}: is a float32 ONNX file; --engine onnxruntime-int8 needs "
                           "one written by koa export --onnx --int8")
        return backend
    if engine == "torch":
        return TorchBackend(path, device)
    if engine == "onnxruntime-int8":
        raise KoaError("--engine onnxruntime-int8 needs an int8 ONNX file as --checkpoint "
                       "(calibrated on training knees): koa export --onnx --int8 --calibrate "
                       "ROOT --out model-int8.onnx")
    backend = _cached_export(path, onnx_cache_path(path, cache_dir))
    backend.source = path
    # the checkpoint's own sidecar, not the copy frozen into the cached export: a
    # temperature fitted after the export was cached still applies

    backend.sidecar = read_sidecar(path)
    return backend


def _cached_export(path: Path, target: Path) -> OrtBackend:
    """The cached ONNX export of ``path``, made once; a cached file that ONNX Runtime
    cannot read (a damaged or foreign file in the cache) is exported again, once."""
    if target.exists():
        try:
            return OrtBackend(target)
        except KoaError as exc:
            print(f"koa: the cached ONNX export {target} is unreadable "
                  f"({str(exc).split(': ', 1)[-1]}); exporting it again", file=sys.stderr,
                  flush=True)
            with contextlib.suppress(OSError):
                target.unlink()
    else:
        print(f"koa: exporting {path.name} to ONNX for ONNX Runtime, once (cached as "
              f"{target})", file=sys.stderr, flush=True)
    export_onnx(path, target)
    return OrtBackend(target)
