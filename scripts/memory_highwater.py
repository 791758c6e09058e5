#!/usr/bin/env python3
"""Peak resident memory of `koa predict` (a folder, CSV out) and `koa evaluate` (a split) at
growing numbers of phantom images: flat means the batch machinery holds a batch, not the
whole set.

    python scripts/memory_highwater.py --images 1000 10000 --save results/bench/memory-cpu.json \
        [--checkpoint CKPT] [--engine torch|onnxruntime|onnxruntime-int8]

Each command runs in its own process; its peak resident set (ru_maxrss, the kernel's
high-water mark) comes from wait4. The phantom's train split of N images is what both
commands read (predict walks its folder; evaluate scores it with --split train).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _peak_mb(cmd: list[str], env: dict) -> tuple[float, float, int]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 1):
        sys.exit(f"{shlex.join(cmd)} failed ({code}):\n{err[-2000:]}")
    return usage.ru_maxrss / 1024, time.perf_counter() - t0, code


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--engine", default="torch")
    ap.add_argument("--save", default=None)
    args = ap.parse_args()

    import torch

    from koa_core.data.phantom import write_phantom
    from koa_core.runtime import code_commit, machine_info

    rows = []
    commit = code_commit()  # at the start: the code every measured command ran
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "KOA_CACHE_DIR": str(Path(tmp) / "cache")}
        koa = [sys.executable, "-m", "koa_core.cli"]
        ckpt = ["--checkpoint", args.checkpoint] if args.checkpoint else []
        for n in args.images:
            root = Path(tmp) / f"phantom-{n}"
            # 70 % of each grade goes to train: enough per grade for n training images
            write_phantom(root, per_class=math.ceil(n / 5 / 0.7) + 1, seed=0)
            train = sorted((root / "train").rglob("*.png"))
            n_train = len(train)
            predict = koa + ["predict", str(root / "train"), "--out", str(Path(tmp) / "p.csv"),
                             "--engine", args.engine, "--quiet", *ckpt]
            evaluate = koa + ["evaluate", "--data", str(root), "--split", "train",
                              "--engine", args.engine, "--n-boot", "0", "--quiet", *ckpt]
            for name, cmd in (("predict", predict), ("evaluate", evaluate)):
                mb, seconds, code = _peak_mb(cmd, env)
                rows.append({"command": name, "images": n_train, "peak_rss_mb": round(mb, 1),
                             "seconds": round(seconds, 1), "exit": code})
                print(f"{name:<8} {n_train:>6} images: peak RSS {mb:7.1f} MB "
                      f"({seconds:.0f} s)", flush=True)
    result = {"engine": args.engine, "checkpoint": args.checkpoint or "shipped",
              "rows": rows,
              "provenance": {"command": shlex.join(["python", *sys.argv]),
                             "commit": commit,
                             "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                             "machine": machine_info(torch.device("cpu"))}}
    if args.save:
        Path(args.save).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
