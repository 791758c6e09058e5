"""Runtime setup shared by training, evaluation and benchmarks (paper §2.3, "Implementation").

Seeding, the device, the autocast precision and a description of the machine a result was
produced on. bf16 autocast is used where the hardware runs it natively (CUDA with bf16;
CPUs with AVX-512-BF16 or AMX); elsewhere emulated bf16 is ~20x slower, so ``auto`` means
fp32 there. :func:`machine_info` is the provenance every result record carries.
:func:`sigterm_as_interrupt` makes a job scheduler's stop end a command like Ctrl-C.
"""

from __future__ import annotations

import importlib
import os
import platform
import random
import signal
import subprocess
import threading
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch

from koa_core.errors import KoaError

__all__ = ["amp_dtype", "autocast", "code_commit", "hardware_name", "machine_info",
           "provenance", "resolve_device", "seed_everything", "sigterm_as_interrupt"]


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed python, numpy and torch; optionally force deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    else:
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick kernels


def resolve_device(local_rank: int = 0) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def cpu_has_bf16() -> bool:
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(cpu, c, lambda: False)() for c in checks)


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """bf16 for ``"bf16"``; for ``"auto"`` only where the hardware runs bf16 natively."""
    if mode is False or mode == "off":  # YAML reads a bare `off` as false
        return None
    if mode == "bf16":
        return torch.bfloat16
    if mode != "auto":
        raise KoaError(f"train.amp must be auto, bf16 or off (got {mode!r})")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if cpu_has_bf16() else None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` in ``dtype``, or nothing for fp32."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


@contextmanager
def sigterm_as_interrupt(sigint: bool = False, active: bool = True):
    """SIGTERM (a job scheduler's stop) and, with ``sigint``, SIGINT raise KeyboardInterrupt
    while the block runs, so the command stops as on Ctrl-C; the old handlers after.

    ``sigint`` sets SIGINT explicitly because a process started in the background inherits
    it as ignored. Handlers are installed only when ``active`` and only in the main thread
    (the only one Python lets set them); elsewhere the block runs with the handlers as they
    are. An old handler installed outside Python (None to Python) is restored as the default.
    """
    signums = (signal.SIGTERM, signal.SIGINT) if sigint else (signal.SIGTERM,)
    install = active and threading.current_thread() is threading.main_thread()
    old = {s: signal.signal(s, _raise_interrupt) for s in signums} if install else {}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware_name(device: torch.device) -> str:
    """``NVIDIA H100 80GB HBM3 (CUDA)`` or ``CPU <model>, N threads``."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA)"
    return f"CPU {_cpu_model()}, {torch.get_num_threads()} threads"


def code_commit() -> str:
    """``$KOA_COMMIT`` where set, else the code's git commit (``-dirty`` with uncommitted
    changes to tracked files), else ``unknown``.

    A copy of the code without its ``.git`` folder (e.g. shipped to a remote GPU machine)
    names its commit through the ``KOA_COMMIT`` environment variable.
    """
    env = os.environ.get("KOA_COMMIT")
    if env:
        return env
    here = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                              text=True, timeout=10)
        if head.returncode == 0:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                   cwd=here, capture_output=True, text=True, timeout=10)
            return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return env or "unknown"


def machine_info(device: torch.device) -> dict:
    """Where a result was computed: hardware, CPU, software versions."""
    info = {
        "hardware": hardware_name(device),
        "cpu": _cpu_model(),
        "cpu_bf16": cpu_has_bf16(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "cudnn": (torch.backends.cudnn.version() if device.type == "cuda" else None),
        "platform": platform.platform(terse=True),
    }
    return info


def provenance(command: str | None = None, device: torch.device | None = None) -> dict:
    """Where a saved result came from: the command (when given), the code's commit, the
    time and, with ``device``, the machine (:func:`machine_info`)."""
    out = {} if command is None else {"command": command}
    out.update(commit=code_commit(), created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    if device is not None:
        out["machine"] = machine_info(device)
    return out


def require(module: str, what: str, extra: str = "onnx"):
    """Import an optional package (ONNX, ONNX Runtime, lightly...) for ``what``, or fail in one
    line naming the extra to install: the one place the project imports optional packages."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise KoaError(f"{what} needs the {module} package: pip install 'koa_core[{extra}]'") \
            from None
