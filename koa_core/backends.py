"""Inference backends: the torch model, and ONNX Runtime for fast CPUs (paper §3.1 inference).

Every backend answers one question the same way: for ``(N, 2, S, S)`` uint8 views (raw,
CLAHE) give the class probabilities ``(N, 5)`` and the fusion gates ``(N, 2)`` (None for a
single-stream model), both float32 whatever precision ran the network, optionally averaged
with each knee's left-right mirror (``tta="flip"``), and the probabilities scaled by the
temperature in the checkpoint's sidecar where ``koa calibrate`` fitted one.

* :class:`TorchBackend` runs the checkpoint's model (channels_last; bf16 autocast where
  the CPU or GPU has native bf16, else fp32).
* :class:`OrtBackend` runs an ONNX file written by :func:`export_onnx`: the same network
  with the softmax inside, its input the uint8 views, the batch dimension dynamic and the
  checkpoint's sidecar (preprocessing, configuration) stored in the file's metadata, so
  the pixels match training exactly as with the safetensors checkpoint.
* ``int8``: static quantization by ONNX Runtime (QDQ, per-channel signed weights, uint8
  activations with ranges calibrated on training knees). ``reduce_range`` keeps 7-bit
  weights so CPUs without VNNI instructions (plain AVX2) cannot saturate their 16-bit
  accumulators; convolutions and fully connected layers are quantized, attention and
  LayerNorm stay in float. Whether int8 keeps the grade is measured, not assumed:
  ``koa bench --onnx --data ROOT`` reports its agreement with torch on the validation
  knees.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from .errors import KoaError
from .feed import to_model_layout
from .runtime import amp_dtype, autocast, resolve_device

__all__ = ["OrtBackend", "TorchBackend", "calibration_views", "export_onnx", "load_backend",
           "predict_views", "quantize_int8"]

ENGINES = ("auto", "torch", "onnxruntime", "onnxruntime-int8")
_META_SIDECAR = "koa_sidecar"
_META_QUANT = "koa_quantization"


@torch.no_grad()
def predict_views(model: torch.nn.Module, views: np.ndarray | torch.Tensor, batch_size: int = 64,
                  device: torch.device | None = None, dtype: torch.dtype | None = None,
                  channels_last: bool = False, tta: str | None = None,
                  ) -> tuple[np.ndarray, np.ndarray | None]:
    """Class probabilities (N, 5) and fusion gates (N, 2) or None for (N, 2, S, S) views.

    ``views`` may be a host array (a memory map is copied chunk by chunk) or a tensor
    already on the device; results stay on the device until one final copy.
    ``tta="flip"``: the mean of the probabilities (and gates) of each knee and its left-right
    mirror (both views mirrored; a left knee's mirror looks like a right knee).
    """
    _check_tta(tta)
    device = device or next(model.parameters()).device
    model.eval()
    probs, gates = [], []
    for i in range(0, len(views), batch_size):
        chunk = views[i:i + batch_size]
        if not isinstance(chunk, torch.Tensor):
            chunk = torch.from_numpy(np.array(chunk))  # copy off the memmap
        x = to_model_layout(chunk.to(device, non_blocking=True), channels_last)
        with autocast(device, dtype):
            out = model(x)
        p = torch.softmax(out["logits"].float(), dim=1)
        g = out["gate"].float() if out["gate"] is not None else None
        if tta == "flip":
            with autocast(device, dtype):
                out = model(x.flip(-1))
            p = (p + torch.softmax(out["logits"].float(), dim=1)) / 2
            g = (g + out["gate"].float()) / 2 if g is not None else None
        probs.append(p)
        if g is not None:
            gates.append(g)
    if not probs:
        return np.zeros((0, 5), np.float32), None
    p = torch.cat(probs).cpu().numpy()
    return p, (torch.cat(gates).cpu().numpy() if gates else None)


def _check_tta(tta: str | None) -> None:
    if tta not in (None, "none", "flip"):
        raise KoaError(f"tta: {tta!r} is not one of none, flip")


class _Calibrated:
    """What every backend shares: the sidecar's fitted temperature (``koa calibrate``),
    applied to the probabilities it reports unless ``calibrated`` is set False."""

    sidecar: dict
    calibrated = True

    @property
    def temperature(self) -> float | None:
        """The temperature applied to this backend's probabilities (None: plain softmax)."""
        from .calibration import sidecar_temperature

        return sidecar_temperature(self.sidecar) if self.calibrated else None

    def _scaled(self, probs: np.ndarray) -> np.ndarray:
        t = self.temperature
        if t is None or not len(probs):
            return probs
        from .calibration import apply_temperature

        return apply_temperature(probs, t).astype(np.float32)


class TorchBackend(_Calibrated):
    """A checkpoint's model run by torch on ``device`` (default: the GPU if any)."""

    engine = "torch"

    def __init__(self, checkpoint: str | Path, device: str | torch.device | None = None):
        from .checkpoint import load_checkpoint

        self.device = torch.device(device) if device else resolve_device()
        self.dtype = amp_dtype("auto", self.device)
        model, self.sidecar = load_checkpoint(checkpoint, self.device)
        self.model = model.to(memory_format=torch.channels_last)
        self.checkpoint = Path(checkpoint)
        self.precision = "bf16 autocast" if self.dtype is not None else "fp32"
        self.cam_model = self.model  # Grad-CAM (koa_core.explain) runs on the same model

    def predict(self, views, batch_size: int = 64, tta: str | None = None):
        p, g = predict_views(self.model, views, batch_size, self.device, self.dtype,
                             channels_last=True, tta=tta)
        return self._scaled(p), g


class _ProbsAndGate(torch.nn.Module):
    """What the ONNX file computes: uint8 views -> (probabilities, gate) in float32."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, views: torch.Tensor):
        out = self.model(views)
        probs = torch.softmax(out["logits"].float(), dim=1)
        return (probs,) if out["gate"] is None else (probs, out["gate"].float())


def _require(module: str, what: str):
    try:
        return __import__(module)
    except ImportError:
        raise KoaError(f"{what} needs the {module} package: pip install 'koa_core[onnx]'") \
            from None


@contextlib.contextmanager
def _quiet():
    """Silence the exporter's and optimizer's progress lines and warnings."""
    names = ("onnxscript", "onnx_ir", "torch.onnx", "torch.export", "torch._dynamo")
    old = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for n, level in old.items():
            logging.getLogger(n).setLevel(level)


def _set_metadata(model_proto, sidecar: dict, quantization: str) -> None:
    del model_proto.metadata_props[:]
    for key, value in ((_META_SIDECAR, json.dumps(sidecar)), (_META_QUANT, quantization)):
        entry = model_proto.metadata_props.add()
        entry.key, entry.value = key, value


def _atomic_save(model_proto, out: Path) -> Path:
    import onnx

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        onnx.save(model_proto, tmp)
        os.replace(tmp, out)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise KoaError(f"{out}: cannot write the ONNX file ({exc.strerror or exc})") from None
    return out


def export_onnx(checkpoint: str | Path, out: str | Path,
                calibration: np.ndarray | None = None) -> Path:
    """Write the checkpoint as ONNX (float32); with ``calibration`` views, int8 instead."""
    from .checkpoint import load_checkpoint

    onnx = _require("onnx", "ONNX export")
    _require("onnxscript", "ONNX export")
    out = Path(out)
    model, sidecar = load_checkpoint(checkpoint)
    model = model.float().eval()
    size = int(sidecar["preprocess"]["size"])
    example = torch.zeros((2, 2, size, size), dtype=torch.uint8)
    with tempfile.TemporaryDirectory() as tmp, _quiet():
        path = Path(tmp) / "model.onnx"
        batch = torch.export.Dim("batch", min=1)
        program = torch.onnx.export(_ProbsAndGate(model), (example,), None,
                                    input_names=["views"],
                                    output_names=["probabilities", "gate"][
                                        :1 + (model.cfg.streams == "dual")],
                                    dynamic_shapes={"views": {0: batch}}, dynamo=True,
                                    verbose=False)
        program.save(str(path), external_data=False)
        proto = onnx.load(str(path))
        _set_metadata(proto, sidecar, "fp32")
        if calibration is None:
            return _atomic_save(proto, out)
        onnx.save(proto, str(path))
        return quantize_int8(path, out, calibration)


def quantize_int8(fp32_path: str | Path, out: str | Path, calibration: np.ndarray) -> Path:
    """Static int8 quantization of an exported file, activations calibrated on ``calibration``
    (uint8 views of training knees); see the module docstring for the scheme."""
    onnx = _require("onnx", "int8 quantization")
    _require("onnxruntime", "int8 quantization")
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(calibration) == 0:
        raise KoaError("int8 quantization needs at least one calibration image")
    calibration = np.ascontiguousarray(calibration, dtype=np.uint8)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"views": calibration[i:i + 8]}
                                 for i in range(0, len(calibration), 8)])

        def get_next(self):
            return next(self.batches, None)

    src = onnx.load(str(fp32_path))
    meta = {p.key: p.value for p in src.metadata_props}
    with tempfile.TemporaryDirectory() as tmp, _quiet():
        pre, q = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(q), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True, reduce_range=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=["Conv", "Gemm"],
                        calibrate_method=CalibrationMethod.MinMax)
        proto = onnx.load(str(q))
    sidecar = json.loads(meta.get(_META_SIDECAR, "{}"))
    _set_metadata(proto, sidecar, f"int8 (static QDQ, per-channel, reduce_range; calibrated on "
                                  f"{len(calibration)} knees)")
    return _atomic_save(proto, Path(out))


def calibration_views(root: str | Path, sidecar: dict, n: int = 64) -> np.ndarray:
    """``n`` knees of ROOT's training split, drawn with seed 0, as the views the checkpoint
    of ``sidecar`` sees: what :func:`quantize_int8` calibrates on (never validation)."""
    from .cache import ViewCache
    from .data import discover
    from .inference import preprocessor_from_sidecar

    records = discover(root).split("train")
    if not records:
        raise KoaError(f"{root}: no training split to calibrate on (ROOT/train/0..4)")
    pick = np.random.default_rng(0).choice(len(records), min(n, len(records)), replace=False)
    chosen = [records[i] for i in sorted(pick)]
    pre = preprocessor_from_sidecar(sidecar)
    return np.asarray(ViewCache().get(chosen, pre, root=str(root)))


class OrtBackend(_Calibrated):
    """An ONNX file written by :func:`export_onnx`, run by ONNX Runtime on the CPU."""

    engine = "onnxruntime"

    def __init__(self, path: str | Path, threads: int | None = None):
        ort = _require("onnxruntime", "--engine onnxruntime")
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
        if _META_SIDECAR not in meta:
            raise KoaError(f"{path}: not an ONNX file written by koa export --onnx "
                           "(no koa_sidecar metadata)")
        self.sidecar = json.loads(meta[_META_SIDECAR])
        self.quantization = meta.get(_META_QUANT, "fp32")
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
            from .checkpoint import load_checkpoint

            self._cam_model = load_checkpoint(self.source)[0].float()
        return self._cam_model

    def _run(self, x: np.ndarray):
        out = self.session.run(None, {"views": x})
        return out[0], (out[1] if self._gated else None)

    def predict(self, views, batch_size: int = 64, tta: str | None = None):
        _check_tta(tta)
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


def onnx_cache_path(checkpoint: str | Path, cache_dir: str | Path | None = None) -> Path:
    """Where the float32 ONNX export of a safetensors checkpoint is kept (by weights digest)."""
    from .cache import default_cache_dir
    from .checkpoint import read_sidecar

    digest = read_sidecar(checkpoint).get("weights_sha256")
    if not digest:
        from .checkpoint import _sha256

        digest = _sha256(Path(checkpoint))
    base = Path(cache_dir) if cache_dir else default_cache_dir()
    return base / "onnx" / f"{digest[:32]}-fp32.onnx"


def resolve_engine(engine: str) -> str:
    """``auto``: torch on a GPU or a CPU with native bf16 (AMX, AVX512-BF16), where it is the
    faster; else ONNX Runtime fp32, which gives the same grades faster on plain AVX2 CPUs
    (``koa bench --onnx``), when its packages are installed. Other names pass through."""
    if engine != "auto":
        return engine
    from .runtime import _cpu_has_bf16

    if torch.cuda.is_available() or _cpu_has_bf16():
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
    target = onnx_cache_path(path, cache_dir)
    if not target.exists():
        import sys

        print(f"koa: exporting {path.name} to ONNX for ONNX Runtime, once (cached as "
              f"{target})", file=sys.stderr, flush=True)
        export_onnx(path, target)
    backend = OrtBackend(target)
    backend.source = path
    # the checkpoint's own sidecar, not the copy frozen into the cached export: a
    # temperature fitted after the export was cached still applies
    from .checkpoint import read_sidecar

    backend.sidecar = read_sidecar(path)
    return backend
