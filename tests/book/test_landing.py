"""The landing page (koa_core.book.landing): the answer and the scorecard, computed from
the records, and refused when a record is incomplete."""

import json

import pytest
from test_report_published import make_records

from koa_core.book import landing
from koa_core.errors import KoaError
from koa_core.experiments.records import PROVENANCE
from koa_core.experiments.verdicts import WORDS


def test_scorecard_refuses_a_record_without_provenance(tmp_path):
    root = make_records(tmp_path)
    prov = root / "raw-s2" / PROVENANCE
    d = json.loads(prov.read_text())
    del d["commit"]
    prov.write_text(json.dumps(d))
    with pytest.raises(KoaError):
        landing.scorecard_markdown(root)


def test_scorecard_markdown_is_computed_from_the_records(tmp_path):
    root = make_records(tmp_path)
    text = landing.scorecard_markdown(root, profile="published")
    assert text.startswith("## The answer")  # the answer first, then the scorecard
    assert text.index("## The answer") < text.index("Compute behind") < text.index(
        "## Scorecard")
    assert "| raw-only beats CLAHE-only (raw − clahe)" in text
    assert "6 records" in text and "CPU test" in text
    assert "validation" in text  # the split that stands in for test is named
    assert "### Per grade (Tables 3 and 4)" in text and "| KL1     | F1" in text
    table = landing.scorecard_table(root)
    assert {v.split(" (")[0] for v in table.verdict} <= set(WORDS)
    # no record, no result: the page says so instead of showing anything else
    assert "No result records" in landing.scorecard_markdown(tmp_path / "none")


def _claim(key, ours, paper, verdict, kind="value", metric="accuracy", reason="",
           configs=("proposed",), grade=None, text=None):
    from koa_core.experiments.scorecard import Claim

    scale = 100.0 if metric == "accuracy" else 1.0
    return Claim(key, text or key, "headline", "Table 4", kind, metric, grade, configs,
                 "at least", paper, 1656, (paper - 1, paper + 1) if paper else None, ours,
                 (ours - 1, ours + 1), (ours - 1, ours + 1), (ours - 1, ours + 1), (1, 2),
                 None if paper is None else ours - paper, None, None, verdict, reason,
                 scale=scale)


def test_summary_lines_are_computed_from_the_claims():
    from koa_core.experiments.groups import SelectionBias

    claims = [_claim("table4/accuracy", 55.0, 72.06, "not reproduced", reason="from scratch",
                     text="accuracy of the proposed model (%)"),
              _claim("table4/f1/KL1", 0.2, 0.668, "not reproduced", metric="f1", grade=1,
                     text="KL1 F1 of the proposed model"),
              _claim("table4/recall/KL4", 0.94, 0.784, "exceeds the paper", metric="recall",
                     grade=4, text="KL4 recall of the proposed model"),
              _claim("steps/accuracy/x-y", 1.0, 1.5, "inconclusive", kind="difference",
                     configs=("x", "y")),
              _claim("steps/macro_f1/x-y", 0.01, None, "confounded", kind="difference",
                     metric="macro_f1", configs=("x", "y"))]
    bias = [SelectionBias("proposed", 3, (10, 16, 35), (20, 26, 40), True,
                          (0.56, 0.51, 0.54), (0.565, 0.465, 0.508))]
    lines = landing.summary_lines(claims, bias)
    assert len(lines) == 3
    assert "55.00 [54.00, 56.00] %" in lines[0]
    assert "*not reproduced* (deviations: from scratch)" in lines[0]
    assert "the last epoch scores 54.00 %, the epochs around the chosen one 51.00 %" in lines[0]
    assert "1 claimed steps, on accuracy 1 inconclusive; on macro F1 1 confounded" in lines[1]
    assert "KL1 F1 of the proposed model, 0.200 against the paper's 0.668" in lines[2]
    assert "Exceeds the paper:** KL4 recall." in lines[2]
    claims[2] = _claim("table4/recall/KL4", 0.94, 0.784, "reproduced", metric="recall",
                       grade=4, text="KL4 recall of the proposed model")
    assert "Nothing of the proposed model exceeds the paper" in landing.summary_lines(claims)[2]
    # a row not testable on this data is left out of the largest gap
    claims[1] = _claim("table4/f1/KL1", 0.2, 0.668, "not testable on this data", metric="f1",
                       grade=1, text="KL1 F1 of the proposed model")
    assert "KL1" not in landing.summary_lines(claims)[2]


def test_landing_assets_compute_box_and_downloads(tmp_path):
    import zipfile

    root = make_records(tmp_path)
    assets = tmp_path / "book" / "generated"
    text = landing.scorecard_markdown(root, assets=assets)
    assert (assets / "summary.png").stat().st_size > 10_000
    assert "](generated/summary.png)" in text
    names = zipfile.ZipFile(assets / "koa-predictions.zip").namelist()
    assert len(names) == 6 and all(n.endswith("val_predictions.csv") for n in names)
    assert len(zipfile.ZipFile(assets / "koa-records.zip").namelist()) > 6
    again = (assets / "koa-records.zip").read_bytes()
    landing.scorecard_markdown(root, assets=assets)
    assert (assets / "koa-records.zip").read_bytes() == again  # same inputs, same bytes
    assert "{download}`every record" in text
    assert "- **Runs:** 6 trainings on CPU test" in text
