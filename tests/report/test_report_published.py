"""The published book's helpers: chapters read records, and refuse incomplete ones."""

import json

import numpy as np
import pytest
from test_records import make_record

from koa_core.errors import KoaError
from koa_core.experiments.records import PROVENANCE
from koa_core.report import evaluation, published

Y = np.repeat(np.arange(5), [40, 20, 25, 12, 5])


def make_records(tmp_path):
    """Six records (raw, clahe, proposed; two seeds each) under ``tmp_path/records``."""
    rng = np.random.default_rng(0)
    for group, rate in (("raw", 0.7), ("clahe", 0.5), ("proposed", 0.6)):
        for seed in (1, 2):
            right = rng.random(len(Y)) < rate
            pred = np.where(right, Y, (Y + 1) % 5)
            make_record(tmp_path, Y, pred, name=f"{group}-s{seed}", seed=seed,
                        gates=group == "proposed")
    return tmp_path / "records"


def test_record_frame_and_metrics_match_the_record(tmp_path):
    recs = published.load_records(make_records(tmp_path))
    rec = recs["proposed-s1"]
    df = published.record_frame(rec)
    assert list(df.columns[:3]) == ["path", "grade", "pred"] and len(df) == len(Y)
    assert np.allclose(df.gate_raw, 0.3)
    m = published.record_metrics(rec, n_boot=50)
    assert m["accuracy"] == pytest.approx(rec["selected"]["val_metrics"]["accuracy"])
    assert evaluation.gate_table(df)["mean w_raw"].tolist() == pytest.approx([0.3] * 5)
    assert np.isnan(published.record_frame(recs["raw-s1"]).gate_raw).all()


def test_published_chapters_refuse_a_record_without_provenance(tmp_path):
    root = make_records(tmp_path)
    prov = root / "raw-s2" / PROVENANCE
    d = json.loads(prov.read_text())
    del d["commit"]
    prov.write_text(json.dumps(d))
    with pytest.raises(KoaError, match="commit"):
        published.load_records(root)


def test_selected_record_name_reads_selection_or_applies_the_rule(tmp_path):
    root = make_records(tmp_path)
    name = published.selected_record_name(root)
    assert name in {p.name for p in root.iterdir()}
    (root.parent / "selection.json").write_text(json.dumps({"name": "clahe-s2"}))
    assert published.selected_record_name(root) == "clahe-s2"


def test_table5_table_and_claims(tmp_path):
    table, t = published.table5_table(make_records(tmp_path))
    assert list(table.index) == ["Single-stream (CLAHE only)", "Single-stream (Raw only)",
                                 "Proposed (cross-attention + gate)"]
    assert table.loc["Single-stream (Raw only)", "paper test accuracy %"] == "65.10"
    claims = published.table5_claims(t)
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
