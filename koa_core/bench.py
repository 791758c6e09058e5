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

With ``--bomb`` it measures instead what a decompression bomb costs (:func:`bench_bomb`):
the peak resident memory of a fresh process that reads one crafted PNG - a 1-bit
30,000 x 30,000 image of about 110 KB and a 16-bit RGBA 12,000 x 12,000 one of about
1 MB - through :func:`koa_core.data.imaging.read_image` (the header is refused before any
pixel is decoded), beside OpenCV decoding the same bytes with no header check (what a
reader pays that looks at the size only after decoding) and a process that only imports
the reader. The goal - under 1 GB on every bomb - is a figure here, not a test.

On a GPU it also samples the GPU's utilisation during the timed training steps, and runs
training fed by the real input pipeline (cached views, augmentation in DataLoader
workers) to see whether the pipeline keeps up: the ratio of that rate to the rate on
tensors already on the device.
"""

from __future__ import annotations

import resource
import os
import platform
import dataclasses
from dataclasses import dataclass
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from koa_core.train.augment import ClassAugment
from koa_core.data.cache import ViewCache
from koa_core.config import ModelConfig
from koa_core.data.index import Record, discover
from koa_core.errors import KoaError
from koa_core.train.dataset import EpochSampler, KneeDataset, make_loader, start_epoch
from koa_core.train.gpumon import GpuUtilization
from koa_core.data.preprocess import Preprocessor, apply_clahe, resize_square
from koa_core.data.phantom import write_phantom
from koa_core.infer.backends import (OrtBackend, TorchBackend, calibration_views, export_onnx,
                                     quantize_int8)
from koa_core.infer.evaluate import preprocessor_from_sidecar
from koa_core.model.checkpoint import resolve_checkpoint
from koa_core.model.network import build_model
from koa_core.runtime import cpu_has_bf16
from koa_core.train.feed import batch_input
from koa_core.train.losses import KLMultiTaskLoss

__all__ = ["bench_bomb", "format_bomb", "format_table", "run_benchmarks", "write_png_bomb"]


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
    pre = preprocessor_from_sidecar(torch_be.sidecar)
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
BOMBS = {"1-bit 30000x30000": (30_000, 30_000, 1, 0),
         "16-bit RGBA 12000x12000": (12_000, 12_000, 16, 6)}

_BOMB_CHILD = """
import resource, sys
how, path = sys.argv[1], sys.argv[2]
if how == "opencv":  # OpenCV as it comes (its own limit is 2**30 pixels), no header check
    import cv2, numpy as np
    data = open(path, "rb").read()
    try:
        cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except Exception:
        pass
else:
    from koa_core.data.imaging import read_image
    from koa_core.errors import KoaError
    if how == "koa":
        try:
            read_image(path)
        except KoaError:
            pass
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:  # this process's own high-water mark: ru_maxrss can carry the parent's over exec
    peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
except OSError:
    pass
print(peak)
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


def _child_peak_mb(how: str, path: Path) -> float:
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OPENCV_IO_MAX_IMAGE_PIXELS"}
    out = subprocess.run([sys.executable, "-c", _BOMB_CHILD, how, str(path)], env=env,
                         capture_output=True, text=True, timeout=600, check=True)
    return round(int(out.stdout.strip().splitlines()[-1]) / 1024, 1)  # KiB on Linux


def bench_bomb() -> dict:
    """Peak RSS (MB: VmHWM, else ru_maxrss) of a fresh process reading each
    :data:`BOMBS` PNG: through koa's reader, through OpenCV alone (no header check: what the
    reader cost when it looked at the size after decoding), and of koa's bare imports."""
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (w, h, bits, colour) in BOMBS.items():
            path = write_png_bomb(Path(tmp) / "bomb.png", w, h, bits, colour)
            rows[name] = {"file_kb": round(path.stat().st_size / 1024, 1),
                          "koa_read_image_mb": _child_peak_mb("koa", path),
                          "opencv_decode_mb": _child_peak_mb("opencv", path),
                          "imports_only_mb": _child_peak_mb("import", path)}
    return {"bombs": rows, "goal_mb": 1024,
            "met": all(r["koa_read_image_mb"] < 1024 for r in rows.values())}


def format_bomb(r: dict) -> str:
    """The --bomb table."""
    lines = [f"{'bomb':<26}{'file KB':>9}{'koa MB':>9}{'OpenCV MB':>11}{'imports MB':>12}"]
    for name, b in r["bombs"].items():
        lines.append(f"{name:<26}{b['file_kb']:>9}{b['koa_read_image_mb']:>9}"
                     f"{b['opencv_decode_mb']:>11}{b['imports_only_mb']:>12}")
    lines.append(f"peak RSS under {r['goal_mb']} MB with koa's reader: "
                 + ("yes" if r["met"] else "NO"))
    return "\n".join(lines)

