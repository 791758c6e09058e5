"""Metrics: classification figures with bootstrap intervals, and calibration (paper §3.1).

Rule (tests/test_layout.py): imports nothing of koa_core but ``errors``, ``config`` and
``paper``.
"""
