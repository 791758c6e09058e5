"""What records say of how their runs were trained: deviations from the paper, what
confounds a step, and how much choosing the epoch on the validation knees lifts them."""

import numpy as np
import pytest
from test_records import make_record

from koa_core.experiments import groups as g

RUN = {"epochs_run": 40, "epochs_planned": 40, "patience": 10, "select_metric": "macro_f1",
       "hardware": "H100", "commit": "85a3325784f8", "copy": "original",
       "encoding": "lossless", "pretrained": "imagenet", "wall_s": 30.0}


def _runs(**per_seed):
    return {s: {**RUN, **{k: v[i] for k, v in per_seed.items()}} for i, s in enumerate((1, 2, 3))}


def test_load_groups_carries_how_each_run_was_trained(tmp_path):
    y = np.tile(np.arange(5), 4)
    make_record(tmp_path, y, y, name="raw-s1", seed=1)
    groups, meta = g.load_groups(tmp_path / "records")
    run = groups["raw"][1]
    for key in ("epochs_run", "epochs_planned", "patience", "select_metric", "hardware",
                "commit", "copy", "encoding", "pretrained", "history"):
        assert key in run, key
    assert run["epochs_run"] == len(run["history"]["val_accuracy"])
    assert meta["raw"]["copy"] == "original"


def test_deviations_name_what_the_records_show():
    runs = _runs(epochs_run=(20, 26, 40), wall_s=(25.0, 32.0, 50.0))
    for r in runs.values():
        r.update(pretrained="none", copy="clahe-5.0-8x8 (enhanced upstream)",
                 encoding="val: as stored; train: webp quality 90 (lossy re-encoding)")
    d = g.deviations(runs)
    assert d == ("from scratch (paper: ImageNet)", "~32 s of training", "20/26/40 epochs",
                 "early stopping (patience 10)", "epoch chosen on these knees",
                 "clahe-5.0-8x8 (enhanced upstream) copy", "lossy training images")
    fixed = _runs()
    for r in fixed.values():
        r.update(patience=40, select_metric=g.LAST)
    assert not any("early stopping" in x or "chosen" in x for x in g.deviations(fixed))


def test_confounders_compare_the_arms_seed_by_seed():
    a, b = _runs(epochs_run=(20, 26, 40)), _runs(epochs_run=(40, 40, 36))
    assert g.confounders(a, b) == ("epochs run (20/26/40 against 40/40/36)",)
    assert g.confounders(a, a) == ()
    c = _runs(epochs_run=(20, 26, 40), commit=("31cb3c3aa",) * 3, hardware=("H200",) * 3)
    assert g.confounders(a, c) == ("hardware (H100 against H200)",
                                   "commit (85a3325 against 31cb3c3)")


def test_selection_bias_sets_the_chosen_epoch_beside_its_neighbours_and_the_last():
    acc = np.array([0.3, 0.4, 0.5, 0.7, 0.5, 0.4, 0.45])
    run = {**RUN, "epoch": 4, "epochs_run": 7,
           "history": {"val_accuracy": acc, "val_macro_f1": acc - 0.1}}
    (b,) = g.selection_bias({"proposed": {1: run}})
    assert b.accuracy == pytest.approx((0.7, np.mean([0.4, 0.5, 0.5, 0.4]), 0.45))
    assert b.macro_f1[0] == pytest.approx(0.6) and b.chosen_on_val
    assert b.chosen_epoch == (4,) and b.epochs_run == (7,)
    last = {**run, "epoch": 7, "select_metric": g.LAST}
    (b,) = g.selection_bias({"proposed": {1: last}})
    assert not b.chosen_on_val and b.accuracy[0] == b.accuracy[2] == 0.45
