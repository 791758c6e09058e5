import time

import torch

from koa_core.train.gpumon import GpuUtilization


def test_cpu_device_reports_none():
    with GpuUtilization(torch.device("cpu"), interval=0.01) as u:
        time.sleep(0.05)
    assert u.mean is None and u.samples == []


def test_samples_while_running_and_stops(monkeypatch):
    readings = iter([10.0] + [30.0, 50.0] * 1000)  # the first read only probes NVML
    monkeypatch.setattr(GpuUtilization, "_read", lambda self: next(readings))
    with GpuUtilization(torch.device("cuda", 0), interval=0.005) as u:
        time.sleep(0.1)
    n = len(u.samples)
    assert n >= 2 and set(u.samples) <= {30.0, 50.0}
    assert 30.0 <= u.mean <= 50.0
    time.sleep(0.05)
    assert len(u.samples) == n  # the thread stopped with the block


def test_missing_nvml_reports_none(monkeypatch):
    monkeypatch.setattr(GpuUtilization, "_read", lambda self: None)
    with GpuUtilization(torch.device("cuda", 0), interval=0.005) as u:
        time.sleep(0.02)
    assert u.mean is None
