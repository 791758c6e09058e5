"""Sizing a plan to one GPU window (koa_core.experiments.sizing) and the window's plan."""

import json

import pytest

from koa_core.cli import main
from koa_core.config import load_config
from koa_core.errors import KoaError
from koa_core.experiments import campaign
from koa_core.experiments.sizing import SINGLE_SPEEDUP, Rates, size_plan


@pytest.fixture(scope="module")
def window():
    _, runs = campaign.load_plan("table5-window")
    return runs, {r.name: load_config(r.configs, r.sets) for r in runs}


def test_window_plan_has_the_stated_priorities_and_fixed_length(window):
    runs, cfgs = window
    assert [r.name for r in runs[:6]] == ["proposed-s1", "raw-s1", "proposed-s2", "raw-s2",
                                          "proposed-s3", "raw-s3"]
    assert [r.group for r in runs[6:]] == ["dual-noattn"] * 3 + ["clahe"] * 3 \
        + ["dual-gate"] * 3
    assert [r.seed for r in runs[6:]] == [1, 2, 3] * 3  # seeds paired across rows
    for cfg in cfgs.values():
        t = cfg.train
        assert (t.epochs, t.patience, t.select_metric) == (40, 40, "last")
        assert (t.batch_size, t.lr, cfg.model.pretrained) == (256, 1e-3, "none")


def test_sizing_trains_a_prefix_so_no_later_run_jumps_ahead(window):
    runs, cfgs = window
    rates = Rates(dual_epoch_s=1.0, overhead_s=2.0)  # dual 42 s a run, single 24.2 s
    assert rates.epoch_s("single") == pytest.approx(1.0 / SINGLE_SPEEDUP)
    # 6 runs of stage 1 = 3 * 42 + 3 * 24.2 = 198.7 s; dual-noattn-s1 would end at 240.7
    sized = size_plan(runs, cfgs, rates, seconds_left=230.0)
    assert [s.name for s in sized if s.fits] == [r.name for r in runs[:6]]
    assert sized[5].ends_s == pytest.approx(198.7, abs=0.1)
    # clahe-s1 alone (24 s) would fit in the 31 s left, but it comes after dual-noattn
    assert not any(s.fits for s in sized[6:])


def test_recorded_runs_cost_nothing(window):
    runs, cfgs = window
    sized = size_plan(runs, cfgs, Rates(1.0, 0.5, 0.0), 41.0, recorded={"proposed-s1"})
    assert [(s.name, s.seconds) for s in sized if s.fits] == [("proposed-s1", 0.0),
                                                             ("raw-s1", 20.0)]


def test_rates_must_be_positive():
    with pytest.raises(KoaError, match="positive"):
        Rates(dual_epoch_s=0.0)
    with pytest.raises(KoaError, match="positive"):
        Rates(dual_epoch_s=1.0, overhead_s=-1.0)


def test_size_only_with_given_figures_writes_the_sizing(tmp_path, capsys):
    out = tmp_path / "sizing.json"
    assert main(["campaign", "table5-window", "--runs", str(tmp_path / "r"), "--records",
                 str(tmp_path / "rec"), "--time-limit", "480", "--size", str(out),
                 "--size-only", "--epoch-s", "1.26", "--single-epoch-s", "0.7",
                 "--overhead-s", "4"]) == 0
    s = json.loads(out.read_text())
    assert s["fit"][:6] == ["proposed-s1", "raw-s1", "proposed-s2", "raw-s2", "proposed-s3",
                            "raw-s3"] and "dual-gate-s1" not in s["fit"]
    assert s["rates"]["dual_epoch_s"] == 1.26 and "runs fit" in capsys.readouterr().out
    assert main(["campaign", "table5-window", "--runs", str(tmp_path / "r"), "--records",
                 str(tmp_path / "rec"), "--size", str(out), "--size-only", "--epoch-s",
                 "1"]) == 2  # no --time-limit: nothing to size to


def test_select_group_keeps_one_plan_row(monkeypatch, tmp_path):
    def rec(name, f1):
        per = {str(g): {"recall": 0.5} for g in range(5)}
        return {"name": name, "selected": {"val_metrics": {"macro_f1": f1, "per_class": per}}}
    recs = {"raw-s1": rec("raw-s1", 0.9), "proposed-s1": rec("proposed-s1", 0.6),
            "proposed-s2": rec("proposed-s2", 0.7), "proposed-ema-s1": rec("proposed-ema-s1", .8)}
    monkeypatch.setattr(campaign, "find_records", lambda root: list(recs))
    monkeypatch.setattr(campaign, "read_record", lambda path: recs[path])
    assert campaign.select_run(tmp_path)["name"] == "raw-s1"
    s = campaign.select_run(tmp_path, group="proposed")
    assert (s["name"], s["eligible"]) == ("proposed-s2", 2)
    assert "proposed-sSEED" in s["rule"]
    with pytest.raises(KoaError, match="dual-gate-sSEED"):
        campaign.select_run(tmp_path, group="dual-gate")
