"""Chapter 4's proposed model (koa_core.report.training.proposed_model): its record or its
run, decided once, and every table read from that one source."""

import pandas as pd
import pytest
from test_report_published import make_records

from koa_core.report import predictions, published, training


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
                                  predictions.predict_split(run / "best.safetensors", root, "val"))


def test_chapter6_from_records_reads_the_selected_run_and_the_raw_run_of_its_seed(
        tmp_path, monkeypatch):
    from koa_core.metrics.classification import majority_rate
    from koa_core.report import evaluation

    monkeypatch.setattr(training, "proposed_checkpoint", lambda *a, **k: 1 / 0)
    monkeypatch.setattr(training, "train_or_reuse", lambda *a, **k: 1 / 0)
    root = make_records(tmp_path)
    models = evaluation.chapter_models(str(root), "", "", ["demo"], [], tmp_path, n_boot=50)
    recs = published.load_records(root)
    name = published.selected_record_name(root)
    seed = name.rsplit("-s", 1)[1]
    assert (models.proposed, models.raw_only, models.split) == (name, f"raw-s{seed}", "val")
    assert models.m == published.record_metrics(recs[name], n_boot=50)
    assert models.m_raw == published.record_metrics(recs[f"raw-s{seed}"], n_boot=50)
    assert models.notes == (published.records_note(
        {k: recs[k] for k in (name, f"raw-s{seed}")}),)
    pp = recs[name]["predictions"]
    assert models.majority == majority_rate(pp["grade"])
    assert (models.probs == pp["probs"]).all() and list(models.patients) == list(pp["patient"])


def test_chapter6_without_records_evaluates_the_test_split_here(tiny_run, monkeypatch):
    from koa_core.report import evaluation

    run, root = tiny_run
    ckpt = run / "best.safetensors"
    monkeypatch.setattr(training, "proposed_checkpoint", lambda *a: ckpt)
    monkeypatch.setattr(training, "train_or_reuse", lambda *a: run)
    models = evaluation.chapter_models("", "", "runs", ["demo"], [], root, n_boot=20)
    pred = predictions.predict_split(ckpt, root, "test")
    assert models.split == "test" and models.notes == ()
    assert models.m["n"] == len(pred) and (models.grades == pred["grade"].to_numpy()).all()
    assert models.probs == pytest.approx(pred[[f"p{g}" for g in range(5)]].to_numpy())
