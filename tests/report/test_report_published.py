"""The published book's helpers: chapters and the scorecard read records, and refuse
incomplete ones."""

import json

import numpy as np
import pytest

from koa_core import report
from koa_core.errors import KoaError
from koa_core.experiments.records import PROVENANCE
from koa_core.experiments.verdicts import WORDS
from test_records import make_record

Y = np.repeat(np.arange(5), [40, 20, 25, 12, 5])


def _records(tmp_path):
    rng = np.random.default_rng(0)
    for group, rate in (("raw", 0.7), ("clahe", 0.5), ("proposed", 0.6)):
        for seed in (1, 2):
            right = rng.random(len(Y)) < rate
            pred = np.where(right, Y, (Y + 1) % 5)
            make_record(tmp_path, Y, pred, name=f"{group}-s{seed}", seed=seed,
                        gates=group == "proposed")
    return tmp_path / "records"


def test_record_frame_and_metrics_match_the_record(tmp_path):
    recs = report.load_records(_records(tmp_path))
    rec = recs["proposed-s1"]
    df = report.record_frame(rec)
    assert list(df.columns[:3]) == ["path", "grade", "pred"] and len(df) == len(Y)
    assert np.allclose(df.gate_raw, 0.3)
    m = report.record_metrics(rec, n_boot=50)
    assert m["accuracy"] == pytest.approx(rec["selected"]["val_metrics"]["accuracy"])
    assert report.gate_table(df)["mean w_raw"].tolist() == pytest.approx([0.3] * 5)
    assert np.isnan(report.record_frame(recs["raw-s1"]).gate_raw).all()


def test_published_chapters_refuse_a_record_without_provenance(tmp_path):
    root = _records(tmp_path)
    prov = root / "raw-s2" / PROVENANCE
    d = json.loads(prov.read_text())
    del d["commit"]
    prov.write_text(json.dumps(d))
    with pytest.raises(KoaError, match="commit"):
        report.load_records(root)
    with pytest.raises(KoaError):
        report.scorecard_markdown(root)


def test_scorecard_markdown_is_computed_from_the_records(tmp_path):
    root = _records(tmp_path)
    text = report.scorecard_markdown(root, profile="published")
    assert text.startswith("## The answer")  # the answer first, then the scorecard
    assert text.index("## The answer") < text.index("Compute behind") < text.index(
        "## Scorecard")
    assert "| raw-only beats CLAHE-only (raw − clahe)" in text
    assert "6 records" in text and "CPU test" in text
    assert "validation" in text  # the split that stands in for test is named
    assert "### Per grade (Tables 3 and 4)" in text and "| KL1     | F1" in text
    table = report.scorecard_table(root)
    assert {v.split(" (")[0] for v in table.verdict} <= set(WORDS)
    # no record, no result: the page says so instead of showing anything else
    assert "No result records" in report.scorecard_markdown(tmp_path / "none")


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
    from koa_core.report.landing import summary_lines

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
    lines = summary_lines(claims, bias)
    assert len(lines) == 3
    assert "55.00 [54.00, 56.00] %" in lines[0]
    assert "*not reproduced* (deviations: from scratch)" in lines[0]
    assert "the last epoch scores 54.00 %, the epochs around the chosen one 51.00 %" in lines[0]
    assert "1 claimed steps, on accuracy 1 inconclusive; on macro F1 1 confounded" in lines[1]
    assert "KL1 F1 of the proposed model, 0.200 against the paper's 0.668" in lines[2]
    assert "Exceeds the paper:** KL4 recall." in lines[2]
    claims[2] = _claim("table4/recall/KL4", 0.94, 0.784, "reproduced", metric="recall",
                       grade=4, text="KL4 recall of the proposed model")
    assert "Nothing of the proposed model exceeds the paper" in summary_lines(claims)[2]
    # a row not testable on this data is left out of the largest gap
    claims[1] = _claim("table4/f1/KL1", 0.2, 0.668, "not testable on this data", metric="f1",
                       grade=1, text="KL1 F1 of the proposed model")
    assert "KL1" not in summary_lines(claims)[2]


def test_landing_assets_compute_box_and_downloads(tmp_path):
    import zipfile

    root = _records(tmp_path)
    assets = tmp_path / "book" / "generated"
    text = report.scorecard_markdown(root, assets=assets)
    assert (assets / "summary.png").stat().st_size > 10_000
    assert "](generated/summary.png)" in text
    names = zipfile.ZipFile(assets / "koa-predictions.zip").namelist()
    assert len(names) == 6 and all(n.endswith("val_predictions.csv") for n in names)
    assert len(zipfile.ZipFile(assets / "koa-records.zip").namelist()) > 6
    again = (assets / "koa-records.zip").read_bytes()
    report.scorecard_markdown(root, assets=assets)
    assert (assets / "koa-records.zip").read_bytes() == again  # same inputs, same bytes
    assert "{download}`every record" in text
    assert "- **Runs:** 6 trainings on CPU test" in text


def test_selected_record_name_reads_selection_or_applies_the_rule(tmp_path):
    root = _records(tmp_path)
    name = report.selected_record_name(root)
    assert name in {p.name for p in root.iterdir()}
    (root.parent / "selection.json").write_text(json.dumps({"name": "clahe-s2"}))
    assert report.selected_record_name(root) == "clahe-s2"


def test_table5_table_and_claims(tmp_path):
    table, t = report.table5_table(_records(tmp_path))
    assert list(table.index) == ["Single-stream (CLAHE only)", "Single-stream (Raw only)",
                                 "Proposed (cross-attention + gate)"]
    assert table.loc["Single-stream (Raw only)", "paper test accuracy %"] == "65.10"
    claims = report.table5_claims(t)
    assert "raw - clahe" in set(claims["difference"])
    # two seeds a side: the scorecard's word, and why
    assert set(claims["verdict (accuracy)"]) == {"too few seeds (seeds: raw 2, clahe 2)",
                                                 "too few seeds (seeds: proposed 2, raw 2)"}


def test_data_caveats_follow_the_records():
    """The caveat about the enhanced copy comes from each record's data.copy (written by
    the command that made or stamped it), never from its free-text name."""
    import numpy as np

    from koa_core.report.published import data_caveats

    def rec(encoding, n, copy=None, name="Chen 2018 knee KL224 (CLAHE-enhanced upstream)"):
        data = {"encoding": encoding, "name": name, **({"copy": copy} if copy else {})}
        return {"provenance": {"data": data}, "config": {"model": {"pretrained": "none"}},
                "predictions": {"grade": np.zeros(n, int)}}

    enh = "clahe-5.0-8x8 (enhanced upstream)"
    real = data_caveats({"a": rec("val: as stored; train: webp quality 90 (lossy)", 826, enh)})
    assert real[0].startswith(f"these records were made on an enhanced copy of the data "
                              f"(data.copy `{enh}`)")
    assert "not testable" in real[0]
    assert any("826 knees" in c for c in real) and any("lossy" in c for c in real)
    mixed = data_caveats({"a": rec("as stored", 826, enh), "b": rec("as stored", 826,
                                                                    "original")})
    assert mixed[0].startswith("some of these records were made on an enhanced copy")
    original = data_caveats({"a": rec("as stored", 826, "original")})  # whatever its name says
    assert not any("CLAHE" in c or "copy" in c for c in original)
    unstamped = data_caveats({"a": rec("as stored", 826)})
    assert unstamped[0].startswith("some records name no data copy")
    fake = data_caveats({"a": rec("synthetic phantom", 30, "phantom", "phantom")})
    assert any("synthetic phantom" in c for c in fake)
    assert not any("CLAHE" in c for c in fake) and any("30 knees" in c for c in fake)
