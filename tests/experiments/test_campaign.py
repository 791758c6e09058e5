"""Campaigns (paper §3.2): many runs on data loaded once, a record each, resumable."""

import json

import pytest
import yaml

from koa_core.cli import main
from koa_core.errors import KoaError
from koa_core.experiments import campaign
from koa_core.experiments.records import check_record, read_record


def _plan(tmp_path, **extra):
    plan = {
        "description": "test",
        "profiles": ["demo"],
        "set": [f"data.cache_dir={tmp_path / 'cache'}", "data.image_size=64",
                "data.phantom_per_class=6", "train.epochs=1", "train.batch_size=8",
                "train.max_steps_per_epoch=1", "train.amp=off", "data.device_resident=on"],
        "stages": [{"name": "t5", "seeds": [1, 2],
                    "runs": [{"name": "raw", "configs": ["ablation-raw"]},
                             {"name": "proposed", "configs": ["ablation-proposed"]}]}],
        **extra,
    }
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    return path


def test_plan_order_and_seeds(tmp_path):
    _, runs = campaign.load_plan(_plan(tmp_path))
    assert [r.name for r in runs] == ["raw-s1", "proposed-s1", "raw-s2", "proposed-s2"]
    assert "train.seed=2" in runs[2].sets and "augment.seed=2" in runs[2].sets
    assert runs[1].configs == ["demo", "ablation-proposed"]


def test_bundled_table5_plan_puts_table5_first():
    plan, runs = campaign.load_plan("table5")
    groups = [r.group for r in runs]
    assert groups[:12] == ["clahe", "raw", "dual-noattn", "proposed"] * 3
    assert groups[12:] == ["dual-gate"] * 3
    assert "model.pretrained=none" in runs[0].sets


@pytest.mark.parametrize("bad,match", [
    ({"stages": "x"}, "list of stages"),
    ({"stages": [{"seeds": [1], "runs": [{"configs": []}]}]}, "needs a name"),
    ({"stages": [{"seeds": ["a"], "runs": [{"name": "x"}]}]}, "seeds"),
    ({"stages": [{"runs": [{"name": "x y"}]}]}, "letters"),
])
def test_bad_plans_are_one_line_errors(tmp_path, bad, match):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(bad))
    with pytest.raises(KoaError, match=match):
        campaign.load_plan(p)


def test_campaign_records_each_run_and_skips_finished_ones(tmp_path, capsys):
    plan = _plan(tmp_path)
    args = ["campaign", str(plan), "--runs", str(tmp_path / "runs"), "--records",
            str(tmp_path / "rec"), "--data-encoding", "phantom PNG"]
    assert main(args + ["--only", "raw-s1", "--only", "proposed"]) == 0  # raw-s2 not asked
    out = capsys.readouterr().out
    assert "3 run(s) trained, 0 already recorded, 0 left" in out
    for name in ("raw-s1", "proposed-s1", "proposed-s2"):
        assert check_record(tmp_path / "rec" / name) == []
    rec = read_record(tmp_path / "rec" / "proposed-s1")
    prov = rec["provenance"]
    assert prov["feed"] == "device" and prov["data"]["encoding"] == "phantom PNG"
    assert prov["data"]["copy"] == "phantom"  # no data root: the phantom names itself
    assert prov["command"].startswith(f"koa campaign {plan} --runs")
    assert rec["selected"]["val_metrics"]["n"] == sum(prov["data"]["val_counts"]) == 5
    assert rec["predictions"]["gate_raw"] is not None
    assert read_record(tmp_path / "rec" / "raw-s1")["predictions"]["gate_raw"] is None
    # a damaged record is trained again; complete ones are skipped
    (tmp_path / "rec" / "raw-s1" / "val_predictions.csv").write_text("path\n")
    before = (tmp_path / "rec" / "proposed-s1" / "provenance.json").read_text()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "2 run(s) trained, 2 already recorded, 0 left" in out
    assert (tmp_path / "rec" / "proposed-s1" / "provenance.json").read_text() == before
    assert check_record(tmp_path / "rec" / "raw-s1") == []
    assert "raw - " not in out  # no claim pairs raw with proposed
    assert "proposed" in out


def test_time_limit_drops_only_the_run_in_progress(tmp_path, capsys):
    plan = _plan(tmp_path)
    rc = main(["campaign", str(plan), "--runs", str(tmp_path / "runs"), "--records",
               str(tmp_path / "rec"), "--time-limit", "0.001", "--only", "raw-s1",
               "--set", "train.epochs=2"])  # the deadline is checked between epochs
    assert rc == 3
    out = capsys.readouterr().out
    assert "stopped: raw-s1 stopped" in out
    assert not (tmp_path / "rec" / "raw-s1").exists()
    assert not (tmp_path / "runs" / "raw-s1").exists()


def test_a_run_that_cannot_fit_is_skipped_and_shorter_ones_still_train(tmp_path, capsys):
    """The time estimate is per architecture (seconds per epoch x planned epochs): a run
    planned far too long is not started, and the plan goes on with the runs after it."""
    plan = _plan(tmp_path, stages=[{"name": "t", "seeds": [1], "runs": [
        {"name": "raw", "configs": ["ablation-raw"]},
        {"name": "huge", "configs": ["ablation-raw"], "set": ["train.epochs=100000"]},
        {"name": "again", "configs": ["ablation-raw"]}]}])
    rc = main(["campaign", str(plan), "--runs", str(tmp_path / "runs"), "--records",
               str(tmp_path / "rec"), "--time-limit", "120"])
    out = capsys.readouterr().out
    assert rc == 3 and "huge-s1 would not finish" in out
    assert check_record(tmp_path / "rec" / "raw-s1") == []
    assert check_record(tmp_path / "rec" / "again-s1") == []
    assert not (tmp_path / "runs" / "huge-s1").exists()


def test_campaign_set_overrides_every_run(tmp_path, capsys):
    plan = _plan(tmp_path)
    rc = main(["campaign", str(plan), "--runs", str(tmp_path / "runs"), "--records",
               str(tmp_path / "rec"), "--only", "raw-s1", "--set", "loss.sord=2.0",
               "--set", "train.ema_decay=0.5"])
    assert rc == 0
    cfg = read_record(tmp_path / "rec" / "raw-s1")["config"]
    assert cfg["loss"]["sord"] == 2.0 and cfg["train"]["ema_decay"] == 0.5
    # the record carries the flip-TTA probabilities beside the plain ones
    p = read_record(tmp_path / "rec" / "raw-s1")["predictions"]
    assert p["probs_flip"] is not None and p["probs_flip"].shape == p["probs"].shape
    # computed from a forward pass of the mirror (the mean with it is the flip TTA:
    # tests/train/test_engine.py), so they differ from the plain ones
    assert abs(p["probs_flip"] - p["probs"]).max() > 1e-4


def test_bundled_recipe_plan_resolves(tmp_path):
    from koa_core.config import load_config

    _, runs = campaign.load_plan("recipe")
    names = [r.name for r in runs]
    assert names[:2] == ["recipe-s1", "recipe-s2"] and "recipe-s3" in names
    cfg = load_config(runs[0].configs, runs[0].sets)
    assert (cfg.loss.alpha_norm, cfg.loss.sord, cfg.train.ema_decay, cfg.train.epochs) \
        == ("mean1", 2.0, 0.99, 80)
    assert cfg.train.patience >= cfg.train.epochs and cfg.model.pretrained == "none"


def test_select_cli(tmp_path, capsys):
    import numpy as np
    from test_records import make_record

    y = np.tile(np.arange(5), 10)
    make_record(tmp_path, y, y, name="good-s1")
    assert main(["select", str(tmp_path / "records"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "good-s1"
    assert main(["select", str(tmp_path / "nothing")]) == 2
    assert "koa: error:" in capsys.readouterr().err


def test_koa_record_of_a_train_run(tiny_run, tmp_path, capsys):
    """koa record: the record of a koa train run is complete, recomputes, and holds the
    run's own selected epoch and the command that wrote it."""
    run, root = tiny_run
    into = tmp_path / "records" / "tiny"
    args = ["record", str(run), "--into", str(into), "--data", str(root),
            "--data-encoding", "phantom PNG"]
    assert main(args) == 2  # a data root: which copy of its images must be said
    err = capsys.readouterr().err
    assert err.startswith("koa: error: --data-copy is required") and err.count("\n") == 1
    assert main(args + ["--data-copy", "not-a-copy"]) == 2
    assert "not a copy name" in capsys.readouterr().err
    assert not into.exists()
    assert main(args + ["--data-copy", "original"]) == 0
    assert check_record(into) == []
    rec = read_record(into)
    assert rec["provenance"]["data"]["copy"] == "original"
    best = json.loads((run / "best.json").read_text())
    assert rec["selected"]["epoch"] == best["epoch"]
    assert rec["provenance"]["command"].startswith("koa record ")
    assert rec["provenance"]["data"]["encoding"] == "phantom PNG"
    # the record's metrics are those the run selected on (same weights, same knees)
    assert rec["selected"]["val_metrics"]["confusion_matrix"] == \
        best["val_metrics"]["confusion_matrix"]
    assert main(["record", str(tmp_path / "nope"), "--into", str(into)]) == 2


def test_a_records_folder_holds_one_copy(tmp_path, capsys):
    """Campaign records name the copy they trained on: a campaign is refused, before it
    trains, where a finished record names another copy or none (stamp those first), and
    a data root needs --data-copy."""
    import numpy as np
    from test_records import _strip_copy, make_record

    plan = _plan(tmp_path)
    y = np.tile(np.arange(5), 2)
    make_record(tmp_path, y, y, name="raw-s1", copy="clahe-5.0-8x8")
    args = ["campaign", str(plan), "--runs", str(tmp_path / "runs"), "--records",
            str(tmp_path / "records"), "--only", "raw-s1"]
    assert main(args) == 2  # the phantom's copy is 'phantom'
    err = capsys.readouterr().err
    assert "trained on the clahe-5.0-8x8 (enhanced upstream) copy" in err
    assert err.count("\n") == 1 and not (tmp_path / "runs" / "raw-s1").exists()
    _strip_copy(tmp_path / "records" / "raw-s1")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "names no data copy" in err and "koa stamp" in err
    assert main(args + ["--data-copy", "original"]) == 2  # the phantom is no original
    assert "synthetic phantom" in capsys.readouterr().err
    assert main(args + ["--data", str(tmp_path / "somewhere")]) == 2
    assert "--data-copy is required" in capsys.readouterr().err


def test_bundled_originals_plan_trains_every_row_to_convergence_on_paired_seeds():
    """The next GPU window's plan: five rows x seeds 1-5, seeds 1-3 of every row first, 80
    epochs with no early stop, the paper's configuration otherwise; every run resolves."""
    from koa_core.config import load_config

    _, runs = campaign.load_plan("table5-originals")
    rows = ["clahe", "raw", "dual-noattn", "dual-gate", "proposed"]
    assert [r.group for r in runs] == rows * 5
    assert [r.seed for r in runs[:15]] == sorted([1, 2, 3] * 5)
    assert {r.seed for r in runs[15:]} == {4, 5}
    for r in runs:
        cfg = load_config(r.configs, r.sets)
        assert (cfg.train.epochs, cfg.train.seed, cfg.model.pretrained) == (80, r.seed, "none")
        assert cfg.train.patience >= cfg.train.epochs and cfg.train.compile
        assert cfg.preprocess.input_clahe_clip is None  # the originals, as the paper
