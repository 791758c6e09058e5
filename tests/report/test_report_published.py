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
    text = report.scorecard_markdown(root, profile="published", n_boot=200)
    assert text.startswith("## The answer")  # the answer first, then the scorecard
    assert text.index("## The answer") < text.index("Compute behind") < text.index(
        "## Scorecard")
    assert "| raw-only beats CLAHE-only (raw − clahe)" in text
    assert "6 records" in text and "CPU test" in text
    assert "validation" in text  # the split that stands in for test is named
    assert "### Per grade (Tables 3 and 4)" in text and "| KL1     | F1" in text
    table = report.scorecard_table(root, n_boot=200)
    assert set(table.verdict) <= set(WORDS) | {v for v in table.verdict
                                              if v.startswith("not comparable (")}
    # no record, no result: the page says so instead of showing anything else
    assert "No result records" in report.scorecard_markdown(tmp_path / "none")


def test_summary_lines_are_computed_from_the_rows():
    from koa_core.report.landing import summary_lines

    def value(claim, ours, paper, verdict, group="proposed", gap=None):
        return {"claim": claim, "kind": "value", "section": "headline", "ours": ours,
                "ci_low": ours - 1, "ci_high": ours + 1, "per_seed": [ours - 1, ours + 1],
                "paper": paper, "gap": ours - paper if gap is None else gap,
                "verdict": verdict, "groups": [group], "handicap": "from scratch"}

    rows = [value("accuracy of the proposed model (%)", 55.0, 72.06, "not comparable"),
            value("KL1 F1 of the proposed model", 0.2, 0.668, "not comparable"),
            value("KL4 recall of the proposed model", 0.94, 0.784, "exceeds the paper"),
            {"claim": "a (x - y, accuracy points)", "kind": "difference",
             "section": "table 5", "verdict": "inconclusive",
             "verdict_macro_f1": "not reproduced"}]
    lines = summary_lines(rows)
    assert len(lines) == 3
    assert "55.00 [54.00, 56.00] %" in lines[0] and "*not comparable* (from scratch)" in lines[0]
    assert "1 claimed steps, on accuracy 1 inconclusive; on macro F1 1 not reproduced" in lines[1]
    assert "KL1 F1 of the proposed model, 0.200 against the paper's 0.668" in lines[2]
    assert "Exceeds the paper:** KL4 recall." in lines[2]
    rows[2]["verdict"] = "reproduced"
    assert "Nothing of the proposed model exceeds the paper" in summary_lines(rows)[2]


def test_landing_assets_compute_box_and_downloads(tmp_path):
    import zipfile

    root = _records(tmp_path)
    assets = tmp_path / "book" / "generated"
    text = report.scorecard_markdown(root, n_boot=100, assets=assets)
    assert (assets / "summary.png").stat().st_size > 10_000
    assert "](generated/summary.png)" in text
    names = zipfile.ZipFile(assets / "koa-predictions.zip").namelist()
    assert len(names) == 6 and all(n.endswith("val_predictions.csv") for n in names)
    assert len(zipfile.ZipFile(assets / "koa-records.zip").namelist()) > 6
    again = (assets / "koa-records.zip").read_bytes()
    report.scorecard_markdown(root, n_boot=100, assets=assets)
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
    table, t = report.table5_table(_records(tmp_path), n_boot=200)
    assert list(table.index) == ["Single-stream (CLAHE only)", "Single-stream (Raw only)",
                                 "Proposed (cross-attention + gate)"]
    assert table.loc["Single-stream (Raw only)", "paper test accuracy %"] == "65.10"
    claims = report.table5_claims(t)
    assert "raw - clahe" in set(claims["difference"])


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
