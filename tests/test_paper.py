"""Tests for koa_core.paper: the one source of the paper's printed figures."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from koa_core import paper
from koa_core.paper import FIG1_COUNTS, FIGURES, TEST_KNEES, printed

PKG = Path(paper.__file__).resolve().parent
# figures that must be typed in koa_core/paper.py alone (the rest of the package reads them)
FIGURE_STRINGS = ("72.06", "0.671", "0.784", "0.133", "61.84", "65.10", "70.47")


def test_printed_figures_are_typed_in_koa_core_paper_alone():
    offenders = [f"{path.relative_to(PKG.parent)}:{n}: {figure}"
                 for path in sorted(PKG.rglob("*.py")) if path != PKG / "paper.py"
                 for n, line in enumerate(path.read_text().splitlines(), 1)
                 for figure in FIGURE_STRINGS if figure in line]
    assert offenders == []


def test_counts():
    assert TEST_KNEES == 1656
    assert sum(FIG1_COUNTS) == 10286


def test_every_key_has_the_scheme():
    bad = [k for k in FIGURES if not re.fullmatch(r"[^/]+/[^/]+(/[^/]+)?", k)]
    assert FIGURES and bad == []


def test_printed():
    kl4 = printed("table4/recall/KL4")
    assert kl4.value == 0.7843 and kl4.support == 51
    with pytest.raises(KeyError):
        printed("table4/recall/KL5")
