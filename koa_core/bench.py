"""Benchmarks: input pipeline and model throughput against a plain baseline (``koa bench``).

Prints figures, asserts nothing (speed goals are not tests). Measured in one run:

* input pipeline, images/s: the *baseline* decodes each sample with PIL, runs OpenCV CLAHE
  and the augmentation per sample inside a DataLoader, every epoch; *ours* decodes once
  into the view cache (cold: building it) and then serves cached views with augmentation
  (warm);
* the proposed model at ``--size`` (224 by default): training and inference images/s in
  fp32 with contiguous tensors (baseline), fp32 with channels_last, bf16 autocast with
  channels_last, and with ``torch.compile`` when ``--compile`` is given (bf16 on a GPU,
  fp32 on a CPU);
* peak memory at the benchmark batch size: resident set size on the CPU (the kernel's
  high-water mark, reset before each measurement), max allocated memory on a GPU;
* with ``--onnx``, inference of a checkpoint (the shipped one by default) by torch fp32
  (and bf16 where the CPU has it) beside ONNX Runtime fp32 and int8 (calibrated on the
  training split), in the same run and at the same batch, with each engine's agreement
  with torch fp32 on the validation split: the share of knees given the same grade and the
  largest and mean absolute difference of the probabilities.

With ``--bomb`` it measures instead what a hostile file costs (:func:`bench_bomb`): the
peak resident memory, the seconds and the outcome of a fresh process that meets one
crafted file - decompression bombs (a 1-bit 30,000 x 30,000 PNG of about 110 KB, a 16-bit
RGBA 12,000 x 12,000 one, a 1 MB deflated DICOM of 1 GiB of zeros, a 6 MB RLE 16-bit RGB
8000 x 8000 DICOM), header floods (4 million empty PNG chunks or JPEG segments, a TIFF of
100,000 pages) and legal files that must stay bounded (a 16-bit RGB PNG just under the
decoded-size limit, a JPEG YBR 8000 x 8000 DICOM, and ``koa predict --cam --report`` on a
7999 x 7999 PNG) - through :func:`koa_core.data.imaging.read_image` or ``koa predict``,
beside the same command on a normal knee, OpenCV decoding the PNG bombs with no header check
(what a reader pays that looks at the size only after decoding) and a process that only
imports the reader. The files are written by this module's ``write_*`` functions, which the
hostile-file tests share at small sizes. The goal - no bomb costs 1 GB more than a normal
knee - is a figure here, not a test.

On a GPU it also samples the GPU's utilisation during the timed training steps, and runs
training fed by the real input pipeline (cached views, augmentation in DataLoader
workers) to see whether the pipeline keeps up: the ratio of that rate to the rate on
tensors already on the device.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import resource
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from koa_core.config import ModelConfig
from koa_core.data.cache import ViewCache
from koa_core.data.index import Record, discover
from koa_core.data.phantom import write_phantom
from koa_core.data.preprocess import Preprocessor, apply_clahe, resize_square
from koa_core.errors import KoaError
from koa_core.infer.backends import (
    OrtBackend,
    TorchBackend,
    calibration_views,
    export_onnx,
    quantize_int8,
)
from koa_core.model.checkpoint import resolve_checkpoint
from koa_core.model.network import build_model
from koa_core.runtime import cpu_has_bf16
from koa_core.train.augment import ClassAugment
from koa_core.train.dataset import EpochSampler, KneeDataset, make_loader, start_epoch
from koa_core.train.feed import batch_input
from koa_core.train.gpumon import GpuUtilization
from koa_core.train.losses import KLMultiTaskLoss

__all__ = ["bench_bomb", "format_bomb", "format_table", "run_benchmarks", "write_deflated_dicom",
           "write_jpeg_dicom", "write_jpeg_segments", "write_png_bomb", "write_png_chunks",
           "write_rle_dicom", "write_tiff_pages"]


# ---------------------------------------------------------------- memory
def _reset_peak_rss() -> None:
    try:  # Linux >= 4.0: "5" resets the VmHWM high-water mark of this process
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------- input pipeline
class _PlainDataset(Dataset):
    """The baseline: PIL decode + CLAHE + augmentation per sample, every time."""

    def __init__(self, records: list[Record], size: int, augment: ClassAugment):
        self.records, self.size, self.augment = records, size, augment

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        from PIL import Image

        r = self.records[i]
        with Image.open(r.path) as im:
            gray = np.asarray(im.convert("L"))
        raw = resize_square(gray, self.size)
        clahe = apply_clahe(raw)
        raw, clahe = self.augment(raw, clahe, r.grade)
        return (torch.from_numpy(raw.astype(np.float32) / 255)[None],
                torch.from_numpy(clahe.astype(np.float32) / 255)[None], r.grade)


def _drain(loader) -> tuple[int, float]:
    t0 = time.perf_counter()
    n = 0
    for batch in loader:
        n += batch[0].shape[0]
    return n, time.perf_counter() - t0


def bench_pipeline(records: list[Record], size: int, workers: int, batch: int) -> dict:
    aug = ClassAugment(size, seed=0)
    plain = DataLoader(_PlainDataset(records, size, aug), batch_size=batch, num_workers=workers)
    n, dt = _drain(plain)
    out = {"baseline_img_s": n / dt}
    pre = Preprocessor(size=size)
    with tempfile.TemporaryDirectory() as tmp:
        cache = ViewCache(tmp, workers=max(1, workers or os.cpu_count() or 1))
        t0 = time.perf_counter()
        views = cache.get(records, pre)
        out["cache_build_img_s"] = len(records) / (time.perf_counter() - t0)
        ds = KneeDataset(records, views, ClassAugment(size, seed=0))
        n, dt = _drain(make_loader(ds, batch, shuffle=True, num_workers=workers))
        out["cached_img_s"] = n / dt
        t0 = time.perf_counter()
        cache.get(records, pre)  # warm hit: key + verification only
        out["cache_reload_s"] = time.perf_counter() - t0
    return out


# ---------------------------------------------------------------- model
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _training_setup(device: torch.device, channels_last: bool):
    """The proposed model (seeded, from scratch), its loss and an AdamW optimizer."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(pretrained="none")).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, KLMultiTaskLoss().to(device), torch.optim.AdamW(model.parameters(), lr=1e-4)


def _train_step(fwd, loss_fn, opt, x, y, ctx) -> None:
    with ctx():
        out = fwd(x)
    loss = loss_fn({k: (v.float() if v is not None else None) for k, v in out.items()},
                   y)["loss"]
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _model_step_rates(size: int, batch: int, device: torch.device, bf16: bool,
                      channels_last: bool, compile_: bool, steps: int) -> dict:
    model, loss_fn, opt = _training_setup(device, channels_last)
    fwd = torch.compile(model) if compile_ else model
    x = torch.randint(0, 256, (batch, 2, size, size), dtype=torch.uint8, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 5, (batch,), device=device)
    ctx = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else nullcontext

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _reset_peak_rss()
    model.train()
    for _ in range(2 if compile_ else 1):  # warm-up (and compilation, also of the backward)
        _train_step(fwd, loss_fn, opt, x, y, ctx)
    _sync(device)
    with GpuUtilization(device) as util:
        t0 = time.perf_counter()
        for _ in range(steps):
            _train_step(fwd, loss_fn, opt, x, y, ctx)
        _sync(device)
        train = batch * steps / (time.perf_counter() - t0)
    model.eval()
    with torch.no_grad():
        with ctx():
            fwd(x)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            with ctx():
                fwd(x)
        _sync(device)
        infer = batch * steps / (time.perf_counter() - t0)
    mem = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda"
           else _peak_rss_mb())
    return {"train_img_s": train, "infer_img_s": infer, "peak_mem_mb": mem,
            "gpu_util": util.mean}


def loader_fed_rate(records: list[Record], size: int, batch: int, device: torch.device,
                    workers: int, steps: int) -> dict:
    """Training images/s (bf16 + channels_last) fed by the cached pipeline with augmentation."""
    model, loss_fn, opt = _training_setup(device, channels_last=True)
    model.train()

    def ctx():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    with tempfile.TemporaryDirectory() as tmp:
        views = ViewCache(tmp, workers=max(1, workers)).get(records, Preprocessor(size=size))
        ds = KneeDataset(records, views, ClassAugment(size, seed=0))
        loader = make_loader(ds, batch, shuffle=True, num_workers=workers, drop_last=True,
                             sampler=EpochSampler(len(ds)), persistent=True)

        def batches(loader):
            epoch = 0
            while True:
                yield from start_epoch(loader, epoch)
                epoch += 1

        def step(it):
            raw, clahe, y, _ = next(it)
            _train_step(model, loss_fn, opt, batch_input(raw, clahe, device, True),
                        y.to(device, non_blocking=True), ctx)

        it = batches(loader)
        for _ in range(3):  # warm-up: workers start, cuDNN picks kernels
            step(it)
        _sync(device)
        with GpuUtilization(device) as util:
            t0 = time.perf_counter()
            for _ in range(steps):
                step(it)
            _sync(device)
            rate = batch * steps / (time.perf_counter() - t0)
        it.close()
        del it, loader  # shuts the workers down before the cache goes
    return {"train_img_s": rate, "gpu_util": util.mean, "workers": workers}


def roofline(size: int, device: torch.device) -> dict:
    """The model's forward FLOPs per image and the device's dense matmul rate.

    Their ratio bounds inference images/s from above: convolutions lower to matrix
    products, which run no faster than a large square matmul (fp32 on a CPU, bf16 on a GPU).
    """
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(ModelConfig(pretrained="none")).eval()
    x = torch.zeros(1, 2, size, size, dtype=torch.uint8)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x)
    flops = fc.get_total_flops()
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (2048, torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = 0.0
    for _ in range(4):  # the first is a warm-up
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        best = max(best, 2 * n**3 / (time.perf_counter() - t0))
    return {"gflop_per_image": flops / 1e9, "matmul_gflops": best / 1e9,
            "matmul_dtype": str(dtype).replace("torch.", ""),
            "infer_ceiling_img_s": best / flops}


@dataclass
class BenchOptions:
    """What :func:`run_benchmarks` measures (``koa bench``'s options)."""

    n_images: int = 256
    size: int = 224
    batch: int = 32
    steps: int = 3
    workers: int = 2
    compile_: bool = False
    skip_model: bool = False
    fed_steps: int | None = None  # loader-fed training steps (None: 100 on a GPU, 0 on a CPU)
    onnx: bool = False  # also onnx_rows for ``checkpoint`` (default: the shipped one)
    checkpoint: str | Path | None = None
    agreement_images: int | None = None


def run_benchmarks(data: str | None = None, options: BenchOptions | None = None,
                   **settings) -> dict:
    """Run every benchmark; returns a JSON-serialisable dict of figures and the machine.
    ``options`` (or its fields as keywords): :class:`BenchOptions`."""
    o = dataclasses.replace(options or BenchOptions(), **settings)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result = {"machine": _machine(device), "size": o.size, "batch": o.batch, "steps": o.steps}
    with tempfile.TemporaryDirectory() as tmp:
        if data is None:
            per_class = max(2, o.n_images // 5 + 1)
            write_phantom(Path(tmp) / "phantom", per_class=per_class, seed=0)
            data = str(Path(tmp) / "phantom")
        records = discover(data).records[:o.n_images]
        result["pipeline_images"] = len(records)
        result["pipeline"] = bench_pipeline(records, o.size, o.workers, o.batch)
        if not o.skip_model:
            configs = {"fp32": (False, False, False), "fp32+channels_last": (False, True, False),
                       "bf16+channels_last": (True, True, False)}
            if o.compile_:  # compiled in the precision that pays on this device
                bf16 = device.type == "cuda"
                configs[("bf16" if bf16 else "fp32") + "+channels_last+compile"] = (bf16, True,
                                                                                   True)
            result["model"] = {name: _model_step_rates(o.size, o.batch, device, *flags,
                                                       steps=o.steps)
                               for name, flags in configs.items()}
            result["roofline"] = roofline(o.size, device)
            best_train = max(v["train_img_s"] for v in result["model"].values())
            result["pipeline_over_training"] = result["pipeline"]["cached_img_s"] / best_train
            fed_steps = o.fed_steps
            if fed_steps is None:
                fed_steps = 100 if device.type == "cuda" else 0
            if fed_steps:
                fed = loader_fed_rate(records, o.size, o.batch, device, o.workers, fed_steps)
                same = "bf16+channels_last" if device.type == "cuda" else "fp32"
                fed["over_device_tensors"] = (fed["train_img_s"]
                                              / result["model"][same]["train_img_s"])
                result["loader_fed"] = fed
        if o.onnx:
            result["onnx"] = onnx_rows(resolve_checkpoint(o.checkpoint), data, o.batch, o.steps,
                                       agreement_images=o.agreement_images)
    return result


def _rate(predict, x: np.ndarray, steps: int) -> float:
    predict(x)  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        predict(x)
    return len(x) * steps / (time.perf_counter() - t0)


def onnx_rows(checkpoint: str | Path, data: str, batch: int = 32, steps: int = 3,
              calibration_images: int = 64, agreement_images: int | None = None) -> dict:
    """Torch against ONNX Runtime fp32 and int8 on one checkpoint: images/s and agreement
    with torch fp32 on ``data``'s validation split (see the module docstring)."""
    index = discover(data)
    val, train = index.split("val"), index.split("train")
    if not val or not train:
        raise KoaError(f"{data}: --onnx needs a train split (calibration) and a val split "
                       "(agreement)")
    rng = np.random.default_rng(0)
    if agreement_images:
        val = [val[i] for i in sorted(rng.choice(len(val), min(agreement_images, len(val)),
                                                 replace=False))]
    torch_be = TorchBackend(checkpoint, "cpu")
    pre = Preprocessor.from_sidecar(torch_be.sidecar)
    cache = ViewCache()
    views = np.asarray(cache.get(val, pre, root=data))
    x = np.ascontiguousarray(np.resize(views, (batch, *views.shape[1:])))
    engines = {}
    torch_be.dtype = None
    torch_be.precision = "fp32"
    engines["torch fp32"] = torch_be
    if cpu_has_bf16():
        bf16 = TorchBackend(checkpoint, "cpu")
        bf16.dtype, bf16.precision = torch.bfloat16, "bf16 autocast"
        engines["torch bf16"] = bf16
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(checkpoint, Path(tmp) / "f.onnx")
        engines["onnxruntime fp32"] = OrtBackend(fp32)
        cal_views = calibration_views(data, torch_be.sidecar, calibration_images)
        engines["onnxruntime int8"] = OrtBackend(quantize_int8(fp32, Path(tmp) / "q.onnx",
                                                               cal_views))
        rows, reference = {}, None
        for name, be in engines.items():
            probs, _ = be.predict(views, batch)
            if reference is None:
                reference = probs
            diff = np.abs(probs - reference)
            rows[name] = {"infer_img_s": _rate(lambda v, b=be: b.predict(v, batch), x, steps),
                          "grade_agreement": float((probs.argmax(1)
                                                    == reference.argmax(1)).mean()),
                          "max_abs_prob_diff": float(diff.max()),
                          "mean_abs_prob_diff": float(diff.mean())}
    return {"checkpoint": str(checkpoint), "data": str(data), "agreement_knees": len(val),
            "calibration_knees": len(cal_views), "threads": torch.get_num_threads(),
            "engines": rows}


def _machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
            f"{torch.get_num_threads()} torch threads, torch {torch.__version__}")


def format_table(r: dict) -> str:
    """Human-readable report of :func:`run_benchmarks`' result."""
    p = r["pipeline"]
    lines = [f"machine: {r['machine']}",
             f"input pipeline ({r['pipeline_images']} images at {r['size']} px, images/s):",
             f"  baseline (PIL decode + CLAHE + augment per sample)  {p['baseline_img_s']:9.1f}",
             f"  view cache, cold build                              {p['cache_build_img_s']:9.1f}"
             f"  ({p['cache_build_img_s'] / p['baseline_img_s']:.1f}x)",
             f"  cached views + augment (warm)                       {p['cached_img_s']:9.1f}"
             f"  ({p['cached_img_s'] / p['baseline_img_s']:.1f}x)",
             f"  warm cache reload + verification                    {p['cache_reload_s']:9.3f} s"]
    if "model" in r:
        base = r["model"]["fp32"]
        lines.append(f"proposed model at {r['size']} px, batch {r['batch']} "
                     "(images/s; peak memory):")
        for name, m in r["model"].items():
            lines.append(f"  {name:<28} train {m['train_img_s']:8.1f} "
                         f"({m['train_img_s'] / base['train_img_s']:.2f}x)  infer "
                         f"{m['infer_img_s']:8.1f} ({m['infer_img_s'] / base['infer_img_s']:.2f}x)"
                         f"  peak {m['peak_mem_mb']:7.0f} MB")
        lines.append(f"cached pipeline / fastest training rate: {r['pipeline_over_training']:.1f}x"
                     " (>= 1 keeps up; goal >= 10)")
        rf = r["roofline"]
        lines.append(f"roofline: {rf['gflop_per_image']:.2f} GFLOP per image (forward), "
                     f"{rf['matmul_dtype']} matmul {rf['matmul_gflops']:.0f} GFLOP/s -> "
                     f"inference ceiling {rf['infer_ceiling_img_s']:.1f} images/s")
        utils = {n: m["gpu_util"] for n, m in r["model"].items() if m.get("gpu_util") is not None}
        if utils:
            lines.append("GPU utilisation during training steps: "
                         + ", ".join(f"{n} {u:.0f}%" for n, u in utils.items()))
    if "onnx" in r:
        o = r["onnx"]
        base = o["engines"]["torch fp32"]["infer_img_s"]
        lines.append(f"inference engines on {o['checkpoint']} at batch {r['batch']} "
                     f"({o['threads']} threads); agreement with torch fp32 on "
                     f"{o['agreement_knees']} validation knees of {o['data']}:")
        for name, e in o["engines"].items():
            lines.append(f"  {name:<18} infer {e['infer_img_s']:8.1f} img/s "
                         f"({e['infer_img_s'] / base:.2f}x)  same grade "
                         f"{100 * e['grade_agreement']:6.2f}%  max |dp| "
                         f"{e['max_abs_prob_diff']:.4f}  mean |dp| {e['mean_abs_prob_diff']:.5f}")
    if "loader_fed" in r:
        f = r["loader_fed"]
        util = f"{f['gpu_util']:.0f}%" if f.get("gpu_util") is not None else "n/a"
        lines.append(f"training fed by the cached pipeline ({f['workers']} workers, bf16+CL): "
                     f"{f['train_img_s']:.1f} img/s = {f['over_device_tensors']:.2f}x the rate "
                     f"on device tensors; GPU utilisation {util}")
    return "\n".join(lines)


# ------------------------------------------------------------------ decompression bombs
_BOMB_CHILD = """
import json, sys
how, path = sys.argv[1], sys.argv[2]
outcome = ""
if how == "opencv":  # OpenCV as it comes (its own limit is 2**30 pixels), no header check
    import cv2, numpy as np
    try:
        img = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED)
        outcome = "not decoded" if img is None else "decoded %dx%d" % img.shape[1::-1]
    except Exception as exc:
        outcome = "not decoded"
elif how in ("read", "import"):
    from koa_core.data.imaging import read_image
    from koa_core.errors import KoaError
    if how == "read":
        try:
            outcome = "read %dx%d" % read_image(path)[0].shape[1::-1]
        except KoaError as exc:
            outcome = "refused: " + str(exc)[len(path) + 2:]
else:  # koa predict, with the pictures for "pictures"
    import contextlib, io, tempfile
    from koa_core.cli import main
    with tempfile.TemporaryDirectory() as out:
        args = ["predict", path, "--engine", "torch", "--quiet", "--out", out + "/g.csv"]
        if how == "pictures":
            args += ["--cam", out + "/cams", "--report", out + "/report"]
        with contextlib.redirect_stdout(io.StringIO()):
            rc = main(args)
    outcome = "graded" if rc == 0 else "exit %d" % rc
peak = 0
try:  # this process's own high-water mark: ru_maxrss can carry the parent's over exec
    peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
except (OSError, StopIteration):
    import resource
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_kb": peak, "outcome": outcome}))
"""


def write_png_bomb(path: str | Path, width: int, height: int, bit_depth: int = 1,
                   colour: int = 0, rows: int | None = None) -> Path:
    """A valid PNG of zeros of the given size, written row block by row block (its pixels
    never exist in memory here); colour is the PNG colour type (0 gray, 6 RGBA). ``rows``
    stores only that many rows (a header to refuse needs no more)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
    row = 1 + (width * channels * bit_depth + 7) // 8
    comp = zlib.compressobj(9)
    block = bytes(row * 64)
    n = height if rows is None else rows
    idat = b"".join(comp.compress(block[:row * min(64, n - i)])
                    for i in range(0, n, 64)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    path = Path(path)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)
                     + chunk(b"IEND", b""))
    return path


def write_png_chunks(path: str | Path, chunks: int, extra_bytes: int = 0) -> Path:
    """A valid 64 x 64 grey PNG with ``chunks`` ancillary chunks (``knEe``: ancillary,
    private, safe to copy) before its image data, each empty but the first, which holds
    ``extra_bytes`` zeros: Pillow's header parser steps through every one of them."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes = b"") -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", 64, 64, 8, 0, 0, 0, 0)
    idat = zlib.compress(bytes(65 * 64), 9)
    path = Path(path)
    with open(path, "wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr))
        if chunks:
            fh.write(chunk(b"knEe", bytes(extra_bytes)))
        empty, left = chunk(b"knEe"), chunks - 1
        while left > 0:  # a million at a time
            n = min(left, 1_000_000)
            fh.write(empty * n)
            left -= n
        fh.write(chunk(b"IDAT", idat) + chunk(b"IEND"))
    return path


def write_jpeg_segments(path: str | Path, segments: int) -> Path:
    """A valid 64 x 64 grey JPEG with ``segments`` empty comment segments (COM, 4 bytes
    each) before its image data: Pillow's header parser steps through every one."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (64, 64)).save(buf, "JPEG")
    enc = buf.getvalue()
    path = Path(path)
    with open(path, "wb") as fh:
        fh.write(enc[:2])  # SOI
        left = segments
        while left > 0:
            n = min(left, 1_000_000)
            fh.write(b"\xff\xfe\x00\x02" * n)
            left -= n
        fh.write(enc[2:])
    return path


def write_tiff_pages(path: str | Path, pages: int) -> Path:
    """A little-endian TIFF of ``pages`` 1 x 1 grey pages (all sharing one pixel), written
    directly: Pillow's writer takes minutes for 10,000 pages."""
    import struct

    entries = [(256, 3, 1), (257, 3, 1), (258, 3, 8), (259, 3, 1), (262, 3, 1),
               (273, 4, 8), (277, 3, 1), (278, 3, 1), (279, 4, 1)]  # tag, type, value
    size = 2 + 12 * len(entries) + 4
    path = Path(path)
    with open(path, "wb") as fh:
        fh.write(b"II*\0" + struct.pack("<I", 12) + b"\x80\0\0\0")  # header, the pixel
        body = b"".join(struct.pack("<HHII", tag, kind, 1, value) for tag, kind, value in entries)
        for k in range(pages):
            following = 12 + (k + 1) * size if k + 1 < pages else 0
            fh.write(struct.pack("<H", len(entries)) + body + struct.pack("<I", following))
    return path


def _dicom_header(rows: int, columns: int, samples: int, bits: int, photometric: str,
                  tsyntax: str):
    """A secondary-capture dataset without pixel data: the image's header only."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, SecondaryCaptureImageStorage, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(tsyntax)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, columns, samples
    if samples > 1:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit, ds.PixelRepresentation = bits - 1, 0
    return ds


def write_deflated_dicom(path: str | Path, rows: int, columns: int) -> Path:
    """An 8-bit grey DICOM in the Deflated Explicit VR Little Endian transfer syntax whose
    pixel data is rows x columns zeros (32768 x 32768: 1 GiB in a file of about 1 MB).
    pydicom writes the file meta and the header; the pixel data element is deflated as
    it is written, so its zeros never exist in memory here."""
    import struct
    import zlib

    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = _dicom_header(rows, columns, 1, 8, "MONOCHROME2", DeflatedExplicitVRLittleEndian)
    meta, body = DicomBytesIO(), DicomBytesIO()
    for fp in (meta, body):
        fp.is_little_endian, fp.is_implicit_VR = True, False
    write_file_meta_info(meta, ds.file_meta)
    write_dataset(body, ds)
    n = rows * columns
    element = b"\xe0\x7f\x10\x00OB\0\0" + struct.pack("<I", n + n % 2)  # (7FE0,0010)
    comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    path = Path(path)
    with open(path, "wb") as fh:
        fh.write(bytes(128) + b"DICM" + meta.getvalue())
        fh.write(comp.compress(body.getvalue() + element))
        block, left = bytes(2 ** 24), n + n % 2
        while left > 0:
            fh.write(comp.compress(block[:min(left, len(block))]))
            left -= len(block)
        fh.write(comp.flush())
    return path


def write_rle_dicom(path: str | Path, rows: int, columns: int, samples: int = 3,
                    bits: int = 16) -> Path:
    """An RLE Lossless DICOM (RGB for three samples) of zeros: each of its samples x bytes
    segments is runs of 128 zeros, 2 bytes each (8000 x 8000 16-bit RGB: 6 MB)."""
    import struct

    from pydicom.encaps import encapsulate
    from pydicom.uid import RLELossless

    ds = _dicom_header(rows, columns, samples, bits, "RGB" if samples == 3 else "MONOCHROME2",
                       RLELossless)
    n = rows * columns
    rest = n % 128  # a last, shorter run (one byte: a literal run of one)
    segment = b"\x81\x00" * (n // 128) + (bytes([257 - rest if rest > 1 else 0, 0])
                                            if rest else b"")
    segments = samples * bits // 8
    offsets = [64 + k * len(segment) for k in range(segments)]
    header = struct.pack("<16I", segments, *offsets, *[0] * (15 - segments))
    ds.PixelData = encapsulate([header + segment * segments])
    ds["PixelData"].VR = "OB"
    path = Path(path)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_jpeg_dicom(path: str | Path, rgb: np.ndarray, quality: int = 90) -> Path:
    """A JPEG Baseline DICOM (YBR_FULL_422: Pillow's 4:2:2 YCbCr) of an RGB uint8 array."""
    import io

    from PIL import Image
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, "JPEG", quality=quality, subsampling=1)
    ds = _dicom_header(rgb.shape[0], rgb.shape[1], 3, 8, "YBR_FULL_422", JPEGBaseline8Bit)
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.LossyImageCompression = "01"
    path = Path(path)
    ds.save_as(path, enforce_file_format=True)
    return path


_HOW = {"read": "read_image", "pictures": "koa predict --cam --report"}


def _bomb_cases() -> dict:
    """Each bomb: (the writer of its file into a folder, how koa meets it, whether OpenCV
    alone decodes it too). The legal ones must be read (or graded) in bounded memory."""
    def png(*args):
        return lambda d: write_png_bomb(d / "bomb.png", *args)

    return {
        "PNG 1-bit 30000x30000": (png(30_000, 30_000), "read", True),
        "PNG 16-bit RGBA 12000x12000": (png(12_000, 12_000, 16, 6), "read", True),
        "PNG 16-bit RGB 6600x6600 (legal)": (png(6_600, 6_600, 16, 2), "read", True),
        "PNG 4,000,000 empty chunks": (
            lambda d: write_png_chunks(d / "bomb.png", 4_000_000), "read", False),
        "JPEG 4,000,000 empty segments": (
            lambda d: write_jpeg_segments(d / "bomb.jpg", 4_000_000), "read", False),
        "TIFF 100,000 1x1 pages": (
            lambda d: write_tiff_pages(d / "bomb.tif", 100_000), "read", False),
        "DICOM deflated, 1 GiB of zeros": (
            lambda d: write_deflated_dicom(d / "bomb.dcm", 32_768, 32_768), "read", False),
        "DICOM RLE 16-bit RGB 8000x8000": (
            lambda d: write_rle_dicom(d / "bomb.dcm", 8_000, 8_000), "read", False),
        "DICOM JPEG YBR 8000x8000 (legal)": (
            lambda d: write_jpeg_dicom(d / "bomb.dcm", np.zeros((8_000, 8_000, 3), np.uint8)),
            "read", False),
        "PNG 7999x7999 (legal), pictures": (png(7_999, 7_999, 8, 0), "pictures", False),
    }


def _child(how: str, path: Path) -> dict:
    """Peak RSS (MB: VmHWM, else ru_maxrss), wall seconds and outcome of a fresh process."""
    import json
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OPENCV_IO_MAX_IMAGE_PIXELS"}
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _BOMB_CHILD, how, str(path)], env=env,
                         capture_output=True, text=True, timeout=900)
    seconds = round(time.perf_counter() - t0, 1)
    if out.returncode != 0:  # killed, or a traceback: recorded, not raised
        last = (out.stderr.strip().splitlines() or [""])[-1][:120]
        return {"mb": None, "seconds": seconds,
                "outcome": f"crashed (exit {out.returncode}) {last}".strip()}
    row = json.loads(out.stdout.strip().splitlines()[-1])
    return {"mb": round(row["peak_kb"] / 1024, 1), "seconds": seconds,  # KiB on Linux
            "outcome": row["outcome"]}


def _normal_knee(folder: Path) -> Path:
    """A 224 x 224 phantom knee: what koa costs on an ordinary input."""
    write_phantom(folder / "phantom", per_class=1, seed=0, size=224)
    return sorted((folder / "phantom").rglob("*.png"))[0]


def bench_bomb() -> dict:
    """What each bomb of :func:`_bomb_cases` costs, each in a fresh process: peak RSS,
    seconds and outcome through koa (``read_image``, or ``koa predict --cam --report``),
    beside the same command on a normal 224-pixel knee (``baseline_mb``), OpenCV alone
    decoding the PNG bombs (no header check: what the reader cost when it looked at the
    size after decoding) and, for the pictures, ``koa predict`` without them. The goal:
    no bomb costs 1 GB more than a normal knee (``over_baseline_mb``)."""
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        knee = _normal_knee(Path(tmp))
        imports = _child("import", knee)["mb"]
        baseline = {how: _child(how, knee)["mb"] for how in _HOW}
        for name, (write, how, opencv) in _bomb_cases().items():
            path = write(Path(tmp))
            koa = _child(how, path)
            row = {"file_kb": round(path.stat().st_size / 1024, 1), "how": _HOW[how],
                   "koa_mb": koa["mb"], "seconds": koa["seconds"], "outcome": koa["outcome"],
                   "baseline_mb": baseline[how]}
            row["over_baseline_mb"] = (None if koa["mb"] is None
                                       else round(koa["mb"] - baseline[how], 1))
            if opencv:
                row["opencv_decode_mb"] = _child("opencv", path)["mb"]
            if how == "pictures":
                row["without_pictures_mb"] = _child("predict", path)["mb"]
            rows[name] = row
            path.unlink()
    goal = 1024
    return {"bombs": rows, "imports_only_mb": imports, "goal_mb": goal,
            "met": all(r["over_baseline_mb"] is not None and r["over_baseline_mb"] < goal
                       for r in rows.values())}


def format_bomb(r: dict) -> str:
    """The --bomb table."""
    def cell(value, width):
        return f"{'-' if value is None else value:>{width}}"

    lines = [f"{'bomb':<36}{'file KB':>9}{'koa MB':>9}{'normal MB':>11}{'s':>7}"
             f"{'OpenCV MB':>11}  outcome"]
    for name, b in r["bombs"].items():
        koa = b.get("koa_mb", b.get("koa_read_image_mb"))
        lines.append(f"{name:<36}{cell(b['file_kb'], 9)}{cell(koa, 9)}"
                     f"{cell(b.get('baseline_mb', b.get('imports_only_mb')), 11)}"
                     f"{cell(b.get('seconds'), 7)}{cell(b.get('opencv_decode_mb'), 11)}  "
                     f"{b.get('outcome', '')[:70]}")
        if "without_pictures_mb" in b:
            lines.append(f"{'':<36}(koa predict without the pictures: "
                         f"{b['without_pictures_mb']} MB)")
    if "imports_only_mb" in r:
        lines.append(f"koa's reader, imports only: {r['imports_only_mb']} MB")
    lines.append(f"every bomb under {r['goal_mb']} MB over the same command on a normal "
                 "knee: " + ("yes" if r["met"] else "NO"))
    return "\n".join(lines)
