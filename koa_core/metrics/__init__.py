"""Metrics: classification figures with bootstrap intervals, and calibration (paper §3.1).

Rule (tests/test_layout.py):
Imports: koa_core, errors, config, files, paper.
"""
