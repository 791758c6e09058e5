"""The recipe's levers against Table 5's proposed runs, and the post-hoc levers."""

import numpy as np
import pytest
from test_records import make_record

from koa_core.errors import KoaError
from koa_core.experiments import recipe
from koa_core.experiments.records import read_record


def _preds(y, rate, rng):
    right = rng.random(len(y)) < rate
    return np.where(right, y, (y + rng.integers(1, 5, len(y))) % 5)


@pytest.fixture
def records(tmp_path):
    rng = np.random.default_rng(0)
    y = np.tile(np.arange(5), 40)
    for s in (1, 2, 3):
        make_record(tmp_path, y, _preds(y, 0.5, rng), name=f"proposed-s{s}", seed=s)
        perfect = np.eye(5)[y] * 0.9 + 0.02  # the mirror sees every knee right
        make_record(tmp_path, y, _preds(y, 0.85, rng), name=f"recipe-s{s}", seed=10 + s,
                    flip=perfect)
    make_record(tmp_path, y, _preds(y, 0.45, rng), name="ema-s1", seed=20)
    return tmp_path / "records", y


def test_levers_against_the_baseline_and_post_hoc_variants(records):
    folder, y = records
    t = recipe.levers_table(folder, n_boot=300)
    rows = {r["name"]: r for r in t["levers"]}
    assert rows["recipe"]["vs_baseline"]["verdict"] == "helps"
    assert rows["recipe"]["vs_baseline"]["seeds"] == [1, 2, 3]
    # one seed: against the mean of every baseline seed, their spread borrowed, and no
    # word but "too few seeds"
    assert rows["ema"]["vs_baseline"]["seeds"] == [1]
    assert rows["ema"]["vs_baseline"]["against"] == [1, 2, 3]
    assert "borrowed" in rows["ema"]["vs_baseline"]["method"]
    assert rows["ema"]["vs_baseline"]["verdict"] == "too few seeds"
    assert rows["recipe"]["vs_baseline"]["verdict_macro_f1"] == "helps"
    assert "vs_baseline" not in rows["proposed"]
    post = {r["name"]: r for r in t["post_hoc"]}
    assert post["flip TTA"]["accuracy"]["mean"] == 1.0
    assert post["flip TTA"]["vs_plain"]["verdict"] == "helps"
    # the ensemble decodes the mean of the seeds' probabilities
    p = [read_record(folder / f"recipe-s{s}")["predictions"]["probs"] for s in (1, 2, 3)]
    ens_acc = float((np.mean(p, 0).argmax(1) == y).mean())
    assert post["seed ensemble"]["accuracy"]["mean"] == pytest.approx(ens_acc)
    best = t["best"]
    assert best["model"] == "recipe seed ensemble + flip TTA"
    assert best["goals"]["accuracy"]["met"] and best["figures"]["accuracy"] == 1.0
    assert {"before", "after", "fold_temperatures"} <= set(best["calibration"])
    text = recipe.format_levers(t)
    assert "recipe" in text and "helps" in text and "goal 0.68: met" in text
    assert text.splitlines()[-1] == "hardware: CPU test; data: copy original; as stored"


def test_expected_and_median_grade_decoding():
    probs = np.array([[0.5, 0.0, 0.0, 0.0, 0.5], [0.1, 0.6, 0.3, 0.0, 0.0],
                      [0.4, 0.0, 0.0, 0.25, 0.35], [0.0, 0.1, 0.1, 0.2, 0.6]])
    assert recipe.decode(probs, "argmax").tolist() == [0, 1, 0, 4]
    assert recipe.decode(probs, "expected").tolist() == [2, 1, 2, 3]
    assert recipe.decode(probs, "median").tolist() == [0, 1, 3, 4]
    with pytest.raises(KoaError, match="not one of argmax, expected, median"):
        recipe.decode(probs, "mode")


def test_median_decoding_is_corns_own():
    """For a CORN head's distribution the median grade is the authors' decoding."""
    import torch
    from coral_pytorch.dataset import corn_label_from_logits

    from koa_core.model.ordinal import corn_log_probs

    torch.manual_seed(0)
    c = torch.randn(300, 4) * 3
    probs = corn_log_probs(c).exp().double().numpy()
    assert recipe.decode(probs, "median").tolist() == corn_label_from_logits(c).tolist()


def test_no_baseline_records_is_one_clear_error(tmp_path):
    y = np.tile(np.arange(5), 4)
    make_record(tmp_path, y, y, name="recipe-s1")
    with pytest.raises(KoaError, match="baseline"):
        recipe.levers_table(tmp_path / "records", n_boot=50)


def test_koa_levers_cli(records, capsys):
    from koa_core.cli import main

    folder, _ = records
    assert main(["levers", str(folder), "--n-boot", "50"]) == 0
    out = capsys.readouterr().out
    assert "recipe" in out and "flip TTA" in out and "(baseline 0." in out
    assert main(["levers", str(folder / "recipe-s1"), "--n-boot", "50"]) != 0
    err = capsys.readouterr().err
    assert err.startswith("koa: error:") and "baseline" in err and "Traceback" not in err


def test_offsets_recover_a_grade_the_model_under_calls():
    """Probabilities that under-call KL1 by a constant factor: the fitted offset for KL1 is
    positive, and macro F1 rises on knees the offsets were not fitted on."""
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 1200)
    logits = rng.normal(0, 1, (1200, 5))
    logits[np.arange(1200), y] += 1.5
    logits[:, 1] -= 1.2  # the model shies away from KL1
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    b = recipe.fit_offsets(probs[:600], y[:600])
    assert b[0] == 0 and b[1] > 0.5
    before = f1_score(y[600:], probs[600:].argmax(1), average="macro")
    after = f1_score(y[600:], (np.log(probs[600:]) + b).argmax(1), average="macro")
    assert after > before + 0.02
    groups = np.repeat(np.arange(600), 2)
    pred = recipe.cross_fitted_offsets(probs, y, groups)
    assert f1_score(y, pred, average="macro") > f1_score(y, probs.argmax(1), average="macro")
