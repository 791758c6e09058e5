"""Inference: grading what a user has, on any backend (paper §3.1, Fig. 7).

:mod:`.backends` (torch, ONNX Runtime), :mod:`.onnx` (export and int8), :mod:`.evaluate`
(a checkpoint on a split, ``koa calibrate``), :mod:`.predict` (files and folders),
:mod:`.explain` (Grad-CAM), :mod:`.knee_report` (one picture per knee) and
:mod:`.profile` (which input check judges a checkpoint's images).

Rule (tests/test_layout.py):
Imports: the ground floor, data, model, metrics.
Never imports: train, experiments, report, book, cli, bench.
"""
