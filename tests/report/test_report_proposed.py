"""Chapter 4's proposed model (koa_core.report.training.proposed_model): its record or its
run, decided once, and every table read from that one source."""

import pandas as pd
from test_report_published import make_records

from koa_core.report import evaluation, published, training


def test_from_records_the_selected_record_is_read_and_nothing_trains(tmp_path, monkeypatch):
    monkeypatch.setattr(training, "proposed_run", lambda *a, **k: 1 / 0)
    root = make_records(tmp_path)
    model = training.proposed_model(str(root), "", ["demo"], [], tmp_path)
    rec = published.load_records(root)[published.selected_record_name(root)]
    assert model.run is None and model.record["name"] == rec["name"]
    (note,) = model.notes()
    assert note == ("From the committed record of the shipped checkpoint's run. "
                    + published.records_note({rec["name"]: rec}))
    pd.testing.assert_frame_equal(model.summary(), published.record_summary(rec))
    monkeypatch.setattr(training, "config_table", lambda cfg: cfg)  # the fake's is partial
    assert model.config() == rec["config"]
    pd.testing.assert_frame_equal(model.history(), published.record_history(rec))
    pd.testing.assert_frame_equal(model.val_predictions(tmp_path), published.record_frame(rec))


def test_without_records_the_run_is_trained_or_reused_here(tiny_run, monkeypatch):
    run, root = tiny_run
    calls = []
    monkeypatch.setattr(training, "proposed_run", lambda *a: calls.append(a) or run)
    model = training.proposed_model("", "runs", ["demo"], ["x=1"], root)
    assert calls == [("runs", ["demo"], ["x=1"], root)] and model.record is None
    assert model.notes() == []
    pd.testing.assert_frame_equal(model.summary(), training.run_summary(run))
    pd.testing.assert_frame_equal(model.config(), training.config_table(run))
    pd.testing.assert_frame_equal(model.history(), training.read_history(run))
    pd.testing.assert_frame_equal(model.val_predictions(root),
                                  evaluation.predict_split(run / "best.safetensors", root, "val"))
