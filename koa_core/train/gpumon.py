"""GPU utilisation sampling for training logs and benchmarks (no paper section: tooling).

:class:`GpuUtilization` samples the device's utilisation (the percentage of time a kernel
was running, as NVML reports it through ``torch.cuda.utilization``) on a background
thread while a block of work runs. Where NVML is missing (no ``nvidia-ml-py``) or the
device is not a CUDA GPU, it reports ``None`` instead of a number.
"""

from __future__ import annotations

import threading

import torch

__all__ = ["GpuUtilization"]


class GpuUtilization:
    """Context manager: ``with GpuUtilization(device) as u: ...; u.mean`` (percent or None)."""

    def __init__(self, device: torch.device | str | None = None, interval: float = 0.1):
        self.device = torch.device(device) if device is not None else None
        self.interval = interval
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self) -> float | None:
        try:
            return float(torch.cuda.utilization(self.device))
        except Exception:  # no NVML, or a device it cannot query
            return None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            value = self._read()
            if value is None:
                return
            self.samples.append(value)

    def __enter__(self) -> GpuUtilization:
        self.samples = []
        usable = (self.device is not None and self.device.type == "cuda"
                  and self._read() is not None)
        if usable:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    @property
    def mean(self) -> float | None:
        """Mean utilisation in percent over the samples, or None where none were taken."""
        return sum(self.samples) / len(self.samples) if self.samples else None
