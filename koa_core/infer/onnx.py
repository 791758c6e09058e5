"""ONNX export and int8 quantization of a checkpoint (beyond the paper: fast CPU inference).

:func:`export_onnx` writes the checkpoint's network as ONNX: the softmax inside, its input
the uint8 views, the batch dimension dynamic and the checkpoint's sidecar (preprocessing,
configuration) stored in the file's metadata, so the pixels match training exactly as with
the safetensors checkpoint. :func:`quantize_int8` is ONNX Runtime's static quantization
(QDQ, per-channel signed weights, uint8 activations with ranges calibrated on training
knees, :func:`calibration_views`). ``reduce_range`` keeps 7-bit weights so CPUs without VNNI
instructions (plain AVX2) cannot saturate their 16-bit accumulators; convolutions and fully
connected layers are quantized, attention and LayerNorm stay in float. Whether int8 keeps
the grade is measured, not assumed: ``koa bench --onnx --data ROOT`` reports its agreement
with torch on the validation knees.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from koa_core.data.cache import ViewCache, default_cache_dir
from koa_core.data.index import discover
from koa_core.data.preprocess import Preprocessor
from koa_core.errors import KoaError
from koa_core.files import publish_mode
from koa_core.model.checkpoint import load_checkpoint, read_sidecar, sha256_file
from koa_core.runtime import require

__all__ = ["META_QUANT", "META_SIDECAR", "OnnxWriteError", "calibration_views", "export_onnx",
           "onnx_cache_path", "quantize_int8", "set_metadata"]

META_SIDECAR = "koa_sidecar"
META_QUANT = "koa_quantization"


class OnnxWriteError(KoaError):
    """An ONNX file could not be written where it was asked for (a cache folder that is
    not writable, a full disk); nothing was left there."""


class _ProbsAndGate(torch.nn.Module):
    """What the ONNX file computes: uint8 views -> (probabilities, gate) in float32."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, views: torch.Tensor):
        out = self.model(views)
        probs = torch.softmax(out["logits"].float(), dim=1)
        return (probs,) if out["gate"] is None else (probs, out["gate"].float())


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


def set_metadata(model_proto, sidecar: dict, quantization: str) -> None:
    del model_proto.metadata_props[:]
    for key, value in ((META_SIDECAR, json.dumps(sidecar)), (META_QUANT, quantization)):
        entry = model_proto.metadata_props.add()
        entry.key, entry.value = key, value


def _atomic_save(model_proto, out: Path) -> Path:
    import onnx

    tmp = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
        os.close(fd)
        onnx.save(model_proto, tmp)
        publish_mode(tmp)  # mkstemp made it 0600
        os.replace(tmp, out)
    except OSError as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise OnnxWriteError(f"{out}: cannot write the ONNX file "
                             f"({exc.strerror or exc})") from None
    return out


def export_onnx(checkpoint: str | Path, out: str | Path,
                calibration: np.ndarray | None = None) -> Path:
    """Write the checkpoint as ONNX (float32); with ``calibration`` views, int8 instead."""
    onnx = require("onnx", "ONNX export")
    require("onnxscript", "ONNX export")
    out = Path(out)
    model, sidecar = load_checkpoint(checkpoint)
    model = model.float().eval()
    size = Preprocessor.from_sidecar(sidecar).size
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
        set_metadata(proto, sidecar, "fp32")
        if calibration is None:
            return _atomic_save(proto, out)
        onnx.save(proto, str(path))
        return quantize_int8(path, out, calibration)


def quantize_int8(fp32_path: str | Path, out: str | Path, calibration: np.ndarray) -> Path:
    """Static int8 quantization of an exported file, activations calibrated on ``calibration``
    (uint8 views of training knees); see the module docstring for the scheme."""
    onnx = require("onnx", "int8 quantization")
    require("onnxruntime", "int8 quantization")
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
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
    sidecar = json.loads(meta.get(META_SIDECAR, "{}"))
    set_metadata(proto, sidecar, f"int8 (static QDQ, per-channel, reduce_range; calibrated on "
                                  f"{len(calibration)} knees)")
    return _atomic_save(proto, Path(out))


def calibration_views(root: str | Path, sidecar: dict, n: int = 64) -> np.ndarray:
    """``n`` knees of ROOT's training split, drawn with seed 0, as the views the checkpoint
    of ``sidecar`` sees: what :func:`quantize_int8` calibrates on (never validation)."""
    records = discover(root).split("train")
    if not records:
        raise KoaError(f"{root}: no training split to calibrate on (ROOT/train/0..4)")
    pre = Preprocessor.from_sidecar(sidecar)  # its values in their ranges before any pixel
    pick = np.random.default_rng(0).choice(len(records), min(n, len(records)), replace=False)
    chosen = [records[i] for i in sorted(pick)]
    return np.asarray(ViewCache().get(chosen, pre, root=str(root)))


def onnx_cache_path(checkpoint: str | Path, cache_dir: str | Path | None = None,
                    digest: str | None = None) -> Path:
    """Where the float32 ONNX export of a safetensors checkpoint is kept: named by the
    SHA-256 of the weights file itself (``digest``, computed when not given; never the
    sidecar's claim, so other weights beside a copied sidecar never find this export) and
    of what the graph is built from besides the weights (the sidecar's model settings and
    input size)."""
    digest = digest or sha256_file(Path(checkpoint))
    side = read_sidecar(checkpoint)

    def entry(d, key):
        return d.get(key) if isinstance(d, dict) else None

    model = entry(entry(side, "config"), "model")
    if isinstance(model, dict):
        model = {k: v for k, v in model.items() if k != "pretrained"}
    graph = json.dumps({"model": model, "size": entry(entry(side, "preprocess"), "size")},
                       sort_keys=True, default=str)
    base = Path(cache_dir) if cache_dir else default_cache_dir()
    return base / "onnx" / (f"{digest[:32]}-{hashlib.sha256(graph.encode()).hexdigest()[:12]}"
                            "-fp32.onnx")
