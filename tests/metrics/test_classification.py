"""Tests for koa_core.metrics.classification: point metrics, bootstrap CIs, report formatting."""

import json

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score, f1_score

from koa_core.errors import KoaError
from koa_core.metrics.classification import (
    classification_metrics,
    confusion_scores,
    format_report,
    majority_rate,
)


def _noisy_predictions(n, seed=0, p_noise=0.3):
    rng = np.random.default_rng(seed)
    y = rng.choice(5, size=n, p=[0.39, 0.18, 0.26, 0.13, 0.04])
    step = rng.choice([-1, 1], size=n)
    pred = np.where(rng.random(n) < p_noise, np.clip(y + step, 0, 4), y)
    return y, pred


@pytest.mark.parametrize(
    "y",
    [
        [0, 1, 2, 3, 4, 0, 1, 2],
        [2, 2, 2, 2],  # one grade only: sklearn's kappa is 0/0, ours is 1.0
        [4],
    ],
)
def test_perfect_predictions(y):
    m = classification_metrics(y, y, n_boot=200, seed=1)
    assert m["accuracy"] == 1.0 and m["qwk"] == 1.0 and m["mae"] == 0.0
    assert m["macro_f1"] == 1.0 and m["weighted_f1"] == 1.0
    for key in ("accuracy", "macro_f1", "qwk"):
        assert m["ci"][key] == [1.0, 1.0]


def test_known_small_example_against_hand_values():
    y_true = [0, 0, 1, 2, 3, 4]
    y_pred = [0, 1, 1, 2, 4, 4]
    m = classification_metrics(y_true, y_pred, n_boot=0)
    assert m["n"] == 6
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["mae"] == pytest.approx(2 / 6)
    # Per class by hand: KL0 P=1 R=1/2; KL1 P=1/2 R=1; KL2 P=R=1; KL3 P=R=0; KL4 P=1/2 R=1.
    hand = {
        "0": (1.0, 0.5, 2 / 3, 2),
        "1": (0.5, 1.0, 2 / 3, 1),
        "2": (1.0, 1.0, 1.0, 1),
        "3": (0.0, 0.0, 0.0, 1),
        "4": (0.5, 1.0, 2 / 3, 1),
    }
    for c, (p, r, f, s) in hand.items():
        row = m["per_class"][c]
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx(
            (p, r, f, s))
    assert m["macro_f1"] == pytest.approx((2 / 3 * 3 + 1.0 + 0.0) / 5)
    assert m["weighted_f1"] == pytest.approx((2 * 2 / 3 + 2 / 3 + 1 + 0 + 2 / 3) / 6)
    # QWK by hand: w = (i-j)^2/16; two off-by-one errors -> observed = 2/16.
    # Expected = sum_ij w_ij * rowsum_i * colsum_j / n with rows (2,1,1,1,1), cols (1,2,1,0,2).
    rows, cols = [2, 1, 1, 1, 1], [1, 2, 1, 0, 2]
    expected = sum((i - j) ** 2 / 16 * rows[i] * cols[j] / 6 for i in range(5) for j in range(5))
    assert m["qwk"] == pytest.approx(1 - (2 / 16) / expected)
    assert m["confusion_matrix"] == [
        [1, 1, 0, 0, 0],
        [0, 1, 0, 0, 0],
        [0, 0, 1, 0, 0],
        [0, 0, 0, 0, 1],
        [0, 0, 0, 0, 1],
    ]
    assert m["ci"] is None


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_per_class_keys_and_confusion_rows_match_support(seed):
    y, p = _noisy_predictions(300, seed=seed)
    m = classification_metrics(y, p, n_boot=50, seed=seed)
    assert list(m["per_class"]) == ["0", "1", "2", "3", "4"]
    cm = np.array(m["confusion_matrix"])
    assert cm.shape == (5, 5) and cm.sum() == m["n"] == 300
    for c in range(5):
        assert cm[c].sum() == m["per_class"][str(c)]["support"] == int((y == c).sum())


@pytest.mark.parametrize("level", [0.8, 0.95])
def test_ci_contains_point_estimate(level):
    y, p = _noisy_predictions(500, seed=3)
    m = classification_metrics(y, p, n_boot=500, seed=0, ci=level)
    assert m["ci"]["level"] == level and m["ci"]["n_boot"] == 500 and m["ci"]["seed"] == 0
    for key in ("accuracy", "macro_f1", "qwk"):
        lo, hi = m["ci"][key]
        assert lo <= m[key] <= hi
        assert hi - lo < 0.2


def test_wider_level_gives_wider_interval():
    y, p = _noisy_predictions(400, seed=4)
    narrow = classification_metrics(y, p, n_boot=400, seed=0, ci=0.5)["ci"]["accuracy"]
    wide = classification_metrics(y, p, n_boot=400, seed=0, ci=0.99)["ci"]["accuracy"]
    assert wide[0] <= narrow[0] and narrow[1] <= wide[1]


def test_json_serialisable():
    y, p = _noisy_predictions(120, seed=5)
    m = classification_metrics(np.asarray(y), np.asarray(p), n_boot=20)
    text = json.dumps(m, allow_nan=False)
    assert json.loads(text) == m


@pytest.mark.parametrize("seed", [0, 7])
def test_deterministic_for_seed(seed):
    y, p = _noisy_predictions(200, seed=6)
    a = classification_metrics(y, p, n_boot=100, seed=seed)
    b = classification_metrics(y, p, n_boot=100, seed=seed)
    assert a == b
    c = classification_metrics(y, p, n_boot=100, seed=seed + 1)
    assert c["ci"] != a["ci"]


@pytest.mark.parametrize(
    "y_true, y_pred",
    [
        ([0, 0, 1, 1], [0, 1, 1, 0]),  # grades 2-4 absent everywhere
        ([0, 1, 2], [0, 1, 4]),  # KL4 predicted but absent from y_true
    ],
)
def test_absent_labels_still_five_entries(y_true, y_pred):
    m = classification_metrics(y_true, y_pred, n_boot=30)
    assert list(m["per_class"]) == ["0", "1", "2", "3", "4"]
    assert np.array(m["confusion_matrix"]).shape == (5, 5)
    for c in range(5):
        if c not in y_true:
            assert m["per_class"][str(c)]["support"] == 0
            assert m["per_class"][str(c)]["recall"] == 0.0
    # macro F1 averages over grades present in y_true or y_pred (sklearn's default).
    assert m["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))


def testconfusion_scores_match_sklearn_on_resamples():
    # The vectorised bootstrap scores must agree with sklearn on the same resamples.
    y, p = _noisy_predictions(150, seed=8)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, y.size, size=(20, y.size))
    cms = np.zeros((20, 5, 5), dtype=np.int64)
    for b in range(20):
        np.add.at(cms[b], (y[idx[b]], p[idx[b]]), 1)
    got = confusion_scores(cms)
    for b in range(20):
        yt, yp = y[idx[b]], p[idx[b]]
        assert got["accuracy"][b] == pytest.approx(np.mean(yt == yp))
        assert got["macro_f1"][b] == pytest.approx(f1_score(yt, yp, average="macro"))
        assert got["qwk"][b] == pytest.approx(
            cohen_kappa_score(yt, yp, labels=list(range(5)), weights="quadratic"))


@pytest.mark.parametrize(
    "y, rate",
    [([0, 0, 1, 2], 0.5), ([4], 1.0), ([0, 1, 2, 3, 4], 0.2), (np.array([3, 3, 3, 1]), 0.75)],
)
def test_majority_rate(y, rate):
    assert majority_rate(y) == pytest.approx(rate)
    assert isinstance(majority_rate(y), float)


@pytest.mark.parametrize(
    "y_true, y_pred, kwargs, match",
    [
        ([0, 1], [0], {}, "samples"),
        ([], [], {}, "no samples"),
        ([0, 5], [0, 1], {}, "0..4"),
        ([0, -1], [0, 1], {}, "0..4"),
        ([0, 1.5], [0, 1], {}, "integers"),
        ([[0, 1]], [[0, 1]], {}, "1-D"),
        ([0, 1], [0, 1], {"n_boot": -1}, "n_boot"),
        ([0, 1], [0, 1], {"ci": 1.0}, "ci"),
    ],
)
def test_input_errors(y_true, y_pred, kwargs, match):
    with pytest.raises(KoaError, match=match):
        classification_metrics(y_true, y_pred, **kwargs)


def test_majority_rate_empty():
    with pytest.raises(KoaError, match="^majority_rate: no samples$"):
        majority_rate([])
    with pytest.raises(KoaError, match="^y_true: grades must lie in 0..4, found 0..7$"):
        majority_rate([0, 7])


@pytest.mark.parametrize("n_boot", [0, 50])
def test_format_report(n_boot):
    y, p = _noisy_predictions(100, seed=9)
    m = classification_metrics(y, p, n_boot=n_boot)
    text = format_report(m)
    for label in ("precision", "recall", "f1-score", "support", "KL0", "KL4", "accuracy",
                  "macro avg", "weighted avg", "QWK", "MAE"):
        assert label in text
    assert f"{m['accuracy']:.4f}" in text and f"{m['qwk']:.4f}" in text
    assert ("95% CI" in text) == bool(n_boot)


def test_bootstrap_on_a_paper_sized_test_set():
    # 1,000 resamples of the paper's 1,656 test images (its speed lives in koa bench, not
    # here): the interval brackets the point estimate and narrows with n.
    y, p = _noisy_predictions(1656, seed=10)
    m = classification_metrics(y, p, n_boot=1000, seed=0)
    assert m["ci"]["n_boot"] == 1000
    lo, hi = m["ci"]["accuracy"]
    assert lo < m["accuracy"] < hi and hi - lo < 0.06


def test_format_report_every_number_is_the_metrics_own():
    """Parse the printed report back: each row's numbers equal scikit-learn's, in the
    layout of the paper's Tables 3-4."""
    from sklearn.metrics import precision_recall_fscore_support

    y, p = _noisy_predictions(200, seed=3)
    m = classification_metrics(y, p, n_boot=40, seed=1)
    lines = format_report(m).splitlines()
    assert lines[0].split() == ["precision", "recall", "f1-score", "support"]
    assert lines[1] == ""
    pr, rc, f1, sup = precision_recall_fscore_support(y, p, labels=range(5), zero_division=0)
    for g in range(5):
        cells = lines[2 + g].split()
        assert cells[0] == f"KL{g}"
        assert [float(c) for c in cells[1:4]] == pytest.approx([pr[g], rc[g], f1[g]],
                                                               abs=5e-5)
        assert int(cells[4]) == sup[g]
    assert lines[7] == ""
    acc = lines[8].split()
    assert acc[0] == "accuracy" and float(acc[1]) == pytest.approx(m["accuracy"], abs=5e-5)
    assert int(acc[2]) == 200
    for line, avg in ((lines[9], "macro"), (lines[10], "weighted")):
        cells = line.split()
        assert cells[:2] == [avg, "avg"] and int(cells[5]) == 200
        want = precision_recall_fscore_support(y, p, average=avg, zero_division=0)[:3]
        assert [float(c) for c in cells[2:5]] == pytest.approx(list(want), abs=5e-5)
    ci = m["ci"]
    assert lines[12] == (f"accuracy {m['accuracy']:.4f}  [95% CI {ci['accuracy'][0]:.4f}-"
                         f"{ci['accuracy'][1]:.4f}]")
    assert lines[13] == (f"macro F1 {m['macro_f1']:.4f}  [95% CI {ci['macro_f1'][0]:.4f}-"
                         f"{ci['macro_f1'][1]:.4f}]")
    assert lines[14] == f"QWK      {m['qwk']:.4f}  [95% CI {ci['qwk'][0]:.4f}-{ci['qwk'][1]:.4f}]"
    assert lines[15] == f"MAE      {m['mae']:.4f} grades"
    assert lines[16] == "(percentile bootstrap, 40 resamples, seed 1)"
    assert len(lines) == 17


def test_bootstrap_interval_is_the_percentile_of_resampled_accuracies():
    """Recomputed independently: the same generator, one resample per row, the 2.5 and
    97.5 percentiles (nan-aware) of the resampled accuracy and macro F1."""
    from sklearn.metrics import f1_score

    y, p = _noisy_predictions(120, seed=5)
    m = classification_metrics(y, p, n_boot=300, seed=7)
    rng = np.random.Generator(np.random.PCG64(7))
    idx = rng.integers(0, 120, size=(300, 120))
    acc = (y[idx] == p[idx]).mean(1)
    f1 = [f1_score(y[i], p[i], average="macro") for i in idx]
    assert m["ci"]["accuracy"] == pytest.approx(list(np.nanquantile(acc, [0.025, 0.975])))
    assert m["ci"]["macro_f1"] == pytest.approx(list(np.nanquantile(f1, [0.025, 0.975])))
    assert m["ci"]["level"] == 0.95 and m["ci"]["seed"] == 7


def test_macro_f1_counts_a_grade_seen_once():
    from sklearn.metrics import f1_score

    y = np.array([0, 0, 1, 2, 2, 3, 3, 4])
    p = np.array([0, 0, 0, 2, 2, 3, 3, 4])  # KL1 appears once, in the truth only
    assert classification_metrics(y, p, n_boot=0)["macro_f1"] == pytest.approx(
        f1_score(y, p, average="macro", zero_division=0))


def test_format_report_of_a_metrics_dict_without_averages():
    y, p = _noisy_predictions(60, seed=2)
    m = classification_metrics(y, p, n_boot=0)
    old = {k: v for k, v in m.items() if k not in ("macro_avg", "weighted_avg")}
    lines = format_report(old).splitlines()
    assert lines[9].split() == ["macro", "avg", f"{m['macro_f1']:.4f}", "60"]
    assert lines[10].split() == ["weighted", "avg", f"{m['weighted_f1']:.4f}", "60"]
    assert lines[11] == "" and len(lines) == 16  # no interval line without a bootstrap


def test_qwk_weighs_distances_over_all_five_grades_when_some_are_absent():
    """Quadratic weights are (i - j)^2 / 16 over KL0..KL4 whatever grades a sample holds;
    over the present grades only, KL0-vs-KL1 would weigh (1/2)^2 instead of (1/4)^2."""
    yt, yp = np.array([0, 1, 4, 4]), np.array([1, 0, 4, 4])
    cm = np.zeros((5, 5))
    np.add.at(cm, (yt, yp), 1)
    w = (np.subtract.outer(np.arange(5), np.arange(5)) ** 2) / 16.0
    expected = np.outer(cm.sum(1), cm.sum(0)) / cm.sum()
    want = 1 - (w * cm).sum() / (w * expected).sum()
    assert classification_metrics(yt, yp, n_boot=0)["qwk"] == pytest.approx(want, abs=1e-12)


def test_bootstrap_draws_exactly_n_boot_resamples_in_any_chunking(monkeypatch):
    import koa_core.metrics.classification as metrics

    y = np.arange(40) % 5
    p = (y + (np.arange(40) % 3 == 0)) % 5
    monkeypatch.setattr(metrics, "_BOOT_CHUNK_ELEMS", 3 * 40)  # 3 resamples per chunk
    assert classification_metrics(y, p, n_boot=10)["ci"]["n_boot"] == 10


def test_metric_defaults_are_1000_resamples_and_seed_0():
    y = np.arange(30) % 5
    p = (y + (np.arange(30) % 4 == 0)) % 5
    assert classification_metrics(y, p)["ci"] == classification_metrics(
        y, p, n_boot=1000, seed=0)["ci"]
    assert classification_metrics(y, p)["ci"]["seed"] == 0


def test_format_report_prints_no_interval_it_does_not_have():
    y = np.arange(20) % 5
    m = classification_metrics(y, y, n_boot=0)
    lines = format_report(m).splitlines()
    assert "accuracy 1.0000" in lines and "QWK      1.0000" in lines
    m = classification_metrics(y, y, n_boot=50)
    del m["ci"]["qwk"]  # a dict from elsewhere with one interval missing
    lines = format_report(m).splitlines()
    assert "QWK      1.0000" in lines
    assert any(line.startswith("accuracy 1.0000  [95% CI ") for line in lines)


def test_grades_may_come_as_tensors_or_integral_floats():
    import torch

    y = [0, 1, 2, 3, 4, 2]
    p = [0, 1, 1, 3, 4, 2]
    ref = classification_metrics(y, p, n_boot=0)
    as_float = classification_metrics(np.array(y, float), np.array(p, float), n_boot=0)
    as_tensor = classification_metrics(torch.tensor(y, dtype=torch.float32,
                                                    requires_grad=True), torch.tensor(p),
                                       n_boot=0)
    for m in (as_float, as_tensor):
        assert m["confusion_matrix"] == ref["confusion_matrix"]
    assert all(type(v) is int for row in ref["confusion_matrix"] for v in row)


@pytest.mark.parametrize("y_true, y_pred, message", [
    ([0, 1.5], [0, 1], "y_true: grades must be integers 0..4"),
    ([0, 1], ["a", "b"], "y_pred: grades must be integers 0..4"),
    ([0, 5], [0, 1], "y_true: grades must lie in 0..4, found 0..5"),
    ([], [], "classification_metrics: no samples"),
])
def test_bad_grades_are_named_whole(y_true, y_pred, message):
    with pytest.raises(KoaError) as err:
        classification_metrics(y_true, y_pred, n_boot=0)
    assert str(err.value) == message


def test_interval_level_must_lie_strictly_between_0_and_1():
    for level in (0.0, 1.0):
        with pytest.raises(KoaError, match=rf"^ci must be in \(0, 1\), got {level}$"):
            classification_metrics([0, 1], [0, 1], n_boot=10, ci=level)


def test_a_grade_never_predicted_has_precision_0_without_warnings():
    import warnings

    y = [0, 1, 2, 3, 4, 4]
    p = [0, 1, 2, 3, 3, 3]  # KL4 never predicted
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = classification_metrics(y, p, n_boot=0)
    assert m["per_class"]["4"]["precision"] == 0.0 and m["per_class"]["4"]["recall"] == 0.0
    assert m["macro_avg"]["precision"] == pytest.approx((1 + 1 + 1 + 1 / 3 + 0) / 5)
