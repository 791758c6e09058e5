"""Training: the loop, the losses, the data feed and what a run leaves (paper §2.3-2.4).

:mod:`.engine` (``fit``), :mod:`.losses`, the dataset, augmentation (CPU and GPU), mixing,
EMA, selection, the GPU monitor, self-supervised pretraining, run folders and export.

Rule (tests/test_layout.py):
Imports: the ground floor, data, model, metrics.
Never imports: infer, experiments, report, book, cli, bench.
"""
