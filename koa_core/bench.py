"""Benchmarks: input pipeline and model throughput against a plain baseline (``koa bench``).

Prints figures, asserts nothing (speed goals are not tests). Measured in one run:

* input pipeline, images/s: the *baseline* decodes each sample with PIL, runs OpenCV CLAHE
  and the augmentation per sample inside a DataLoader, every epoch; *ours* decodes once
  into the view cache (cold: building it) and then serves cached views with augmentation
  (warm);
* the proposed model at ``--size`` (224 by default): training and inference images/s in
  fp32 with contiguous tensors (baseline) and in bf16 autocast with channels_last
  (and with ``torch.compile`` when ``--compile`` is given);
* peak memory at the benchmark batch size: resident set size on the CPU (the kernel's
  high-water mark, reset before each measurement), max allocated memory on a GPU.

On a GPU it also reports whether the cached input pipeline keeps up with training.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .augment import ClassAugment
from .cache import ViewCache
from .config import ModelConfig
from .data import Record, discover
from .dataset import KneeDataset, make_loader
from .preprocess import Preprocessor, apply_clahe, resize_square

__all__ = ["format_table", "run_benchmarks"]


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
    import resource
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
def _model_step_rates(size: int, batch: int, device: torch.device, bf16: bool,
                      channels_last: bool, compile_: bool, steps: int) -> dict:
    from .losses import KLMultiTaskLoss
    from .models import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(pretrained="none")).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    fwd = torch.compile(model) if compile_ else model
    loss_fn = KLMultiTaskLoss().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, 256, (batch, 2, size, size), dtype=torch.uint8, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 5, (batch,), device=device)
    ctx = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else nullcontext

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def train_step():
        with ctx():
            out = fwd(x)
        loss = loss_fn({k: (v.float() if v is not None else None) for k, v in out.items()},
                       y)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _reset_peak_rss()
    model.train()
    train_step()  # warm-up (and compilation)
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        train_step()
    sync()
    train = batch * steps / (time.perf_counter() - t0)
    model.eval()
    with torch.no_grad():
        with ctx():
            fwd(x)
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            with ctx():
                fwd(x)
        sync()
        infer = batch * steps / (time.perf_counter() - t0)
    mem = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda"
           else _peak_rss_mb())
    return {"train_img_s": train, "infer_img_s": infer, "peak_mem_mb": mem}


def run_benchmarks(data: str | None = None, n_images: int = 256, size: int = 224,
                   batch: int = 32, steps: int = 3, workers: int = 2, compile_: bool = False,
                   skip_model: bool = False) -> dict:
    """Run every benchmark; returns a JSON-serialisable dict of figures and the machine."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result = {"machine": _machine(device), "size": size, "batch": batch, "steps": steps}
    with tempfile.TemporaryDirectory() as tmp:
        if data is None:
            from .phantom import write_phantom
            per_class = max(2, n_images // 5 + 1)
            write_phantom(Path(tmp) / "phantom", per_class=per_class, seed=0)
            data = str(Path(tmp) / "phantom")
        records = discover(data).records[:n_images]
        result["pipeline_images"] = len(records)
        result["pipeline"] = bench_pipeline(records, size, workers, batch)
    if not skip_model:
        configs = {"fp32": (False, False, False), "bf16+channels_last": (True, True, False)}
        if compile_:
            configs["bf16+channels_last+compile"] = (True, True, True)
        result["model"] = {name: _model_step_rates(size, batch, device, *flags, steps=steps)
                           for name, flags in configs.items()}
        best_train = max(v["train_img_s"] for v in result["model"].values())
        result["pipeline_over_training"] = result["pipeline"]["cached_img_s"] / best_train
    return result


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
    return "\n".join(lines)

