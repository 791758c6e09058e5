"""Table 5 from records (paper §3.2): per-configuration means, paired claims, verdicts."""

import numpy as np
import pytest
from sklearn.metrics import f1_score
from test_records import make_record

from koa_core.errors import KoaError
from koa_core.experiments import ablation, verdicts
from koa_core.experiments.campaign import select_run


def test_bootstrap_macro_f1_matches_sklearn():
    rng = np.random.default_rng(0)
    for _ in range(20):
        y = rng.integers(0, 5, 60)
        p = np.where(rng.random(60) < 0.5, y, rng.integers(0, 4, 60))
        _, f1, _, _ = ablation.boot_scores(y, p, np.arange(60)[None])
        assert f1[0] == pytest.approx(f1_score(y, p, average="macro", zero_division=0))


def _preds(y, correct_rate, rng):
    right = rng.random(len(y)) < correct_rate
    wrong = (y + rng.integers(1, 5, len(y))) % 5
    return np.where(right, y, wrong)


def _group(y, rate, seeds, rng):
    paths = [f"val/{g}/{i}.png" for i, g in enumerate(y)]
    return {s: {"grade": y, "pred": _preds(y, rate, rng), "path": paths} for s in seeds}


@pytest.mark.parametrize("a_rate,b_rate,sign", [(0.9, 0.5, 1), (0.5, 0.9, -1), (0.6, 0.6, 0)])
def test_paired_difference_intervals(a_rate, b_rate, sign):
    rng = np.random.default_rng(1)
    y = np.tile(np.arange(5), 80)
    a, b = _group(y, a_rate, [1, 2, 3], rng), _group(y, b_rate, [1, 2, 3], rng)
    d = ablation.paired_difference(a, b, n_boot=500)
    lo, hi = d["accuracy_ci"]
    assert lo <= d["accuracy"] <= hi
    assert d["accuracy"] == pytest.approx(
        np.mean([(a[s]["pred"] == y).mean() - (b[s]["pred"] == y).mean() for s in (1, 2, 3)]))
    if sign == 0:  # same accuracy: an interval around 0 of a few points
        assert lo < 0 < hi and hi - lo < 0.2
    else:
        assert (lo > 0 if sign > 0 else hi < 0)


def test_pairing_refuses_different_knees():
    rng = np.random.default_rng(2)
    y = np.tile(np.arange(5), 10)
    a, b = _group(y, 0.8, [1], rng), _group(y, 0.8, [1], rng)
    b[1]["path"] = list(reversed(b[1]["path"]))
    with pytest.raises(KoaError, match="different validation knees"):
        ablation.paired_difference(a, b)
    with pytest.raises(KoaError, match="no seed"):
        ablation.paired_difference(a, _group(y, 0.8, [2], rng))


def test_table_from_records(tmp_path):
    rng = np.random.default_rng(3)
    y = np.tile(np.arange(5), 40)
    for group, rate in (("raw", 0.8), ("clahe", 0.4)):
        for seed in (1, 2):
            make_record(tmp_path, y, _preds(y, rate, rng), name=f"{group}-s{seed}", seed=seed)
    t = ablation.ablation_table(tmp_path / "records")
    raw = t["configurations"]["raw"]
    assert raw["seeds"] == [1, 2] and raw["paper_test_accuracy"] == 65.10
    assert 0.7 < raw["accuracy"]["mean"] < 0.9 and raw["accuracy"]["sd"] is not None
    acc, f1 = t["claims"]  # one step, an accuracy and a macro-F1 claim
    assert acc["configs"] == ["raw", "clahe"] and acc["metric"] == "accuracy"
    assert f1["metric"] == "macro_f1" and acc["ours"] > 30  # points
    # two seeds a side: the numbers stand, no word about direction
    assert acc["verdict"] == f1["verdict"] == verdicts.TOO_FEW_SEEDS
    assert "raw 2, clahe 2" in acc["reason"]
    text = ablation.format_ablation(t)
    assert "raw - clahe, accuracy points" in text and "too few seeds" in text
    assert raw["copy"] == "original"
    assert text.splitlines()[-1] == "hardware: CPU test; data: copy original; as stored"


def test_the_data_line_names_every_copy_and_old_records(tmp_path):
    from test_records import _strip_copy

    y = np.tile(np.arange(5), 4)
    make_record(tmp_path, y, y, name="raw-s1")
    make_record(tmp_path, y, y, name="clahe-s1", copy="clahe-5.0-8x8")
    text = ablation.format_ablation(ablation.ablation_table(tmp_path / "records"))
    assert text.endswith("data: copies clahe-5.0-8x8 (enhanced upstream) + original; "
                         "as stored")
    _strip_copy(tmp_path / "records" / "raw-s1")  # a record from before data.copy
    text = ablation.format_ablation(ablation.ablation_table(tmp_path / "records"))
    assert "not named (record from before data.copy)" in text.splitlines()[-1]


def test_select_run_applies_the_recall_floor(tmp_path):
    y = np.tile(np.arange(5), 20)
    never_kl1 = np.where(y == 1, 0, y)  # best accuracy, but KL1 recall 0
    rng = np.random.default_rng(4)
    fair = _preds(y, 0.7, rng)
    make_record(tmp_path, y, never_kl1, name="a-s1")
    make_record(tmp_path, y, fair, name="b-s1")
    s = select_run(tmp_path / "records", min_recall=0.3)
    assert s["name"] == "b-s1" and s["eligible"] == 1 and s["records"] == 2
    with pytest.raises(KoaError, match="recall"):
        select_run(tmp_path / "records", min_recall=0.99)


def test_bootstrap_qwk_and_mae_match_scikit_learn_on_the_full_sample():
    from sklearn.metrics import cohen_kappa_score, mean_absolute_error

    rng = np.random.default_rng(4)
    y = rng.integers(0, 5, 300)
    pred = np.clip(y + rng.integers(-2, 3, 300), 0, 4)
    acc, f1, qwk, mae = ablation.boot_scores(y, pred, np.arange(300)[None])
    assert qwk[0] == pytest.approx(cohen_kappa_score(y, pred, weights="quadratic"), abs=1e-12)
    assert mae[0] == pytest.approx(mean_absolute_error(y, pred))
    a = {1: {"grade": y, "pred": pred, "path": list(range(300))}}
    b = {1: {"grade": y, "pred": y.copy(), "path": list(range(300))}}
    d = ablation.paired_difference(a, b, n_boot=300)
    assert d["qwk"] == pytest.approx(cohen_kappa_score(y, pred, weights="quadratic") - 1)
    assert d["mae"] > 0 and d["mae_ci"][0] > 0  # worse predictions: a larger error
