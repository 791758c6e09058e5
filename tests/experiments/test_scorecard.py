"""The claim-by-claim scorecard: each verdict word on crafted predictions, read from the
typed claims' fields."""

import numpy as np
import pytest

from koa_core.experiments import scorecard, verdicts
from koa_core.paper import AT_MOST

# how every crafted run was trained unless a test says otherwise: alike in every arm
TRAINED = {"epochs_run": 40, "epochs_planned": 40, "patience": 40, "select_metric": "last",
           "hardware": "GPU", "commit": "abc", "copy": "original", "encoding": "lossless",
           "pretrained": "imagenet", "wall_s": 300.0}


def _group(y, rate, seeds=(1, 2, 3), seed=0, gate=None, **trained):
    rng = np.random.default_rng(seed)
    out = {}
    for s in seeds:
        right = rng.random(len(y)) < (rate[s] if isinstance(rate, dict) else rate)
        pred = np.where(right, y, (y + rng.integers(1, 5, len(y))) % 5)
        out[s] = {"grade": y, "pred": pred, "gate_raw": None if gate is None else gate(y, rng),
                  **TRAINED, **{k: (v[s] if isinstance(v, dict) else v)
                                for k, v in trained.items()}}
    return out


# 1,600 knees: the value claims' intervals come out near the paper's own ±2.2 points
Y = np.repeat(np.arange(5), [640, 300, 380, 200, 80])
SCRATCH = {"pretrained": "none", "wall_s": 32.0, "patience": 10,
           "select_metric": "macro_f1", "epochs_run": {1: 20, 2: 26, 3: 40}}
ENHANCED = "clahe-5.0-8x8 (enhanced upstream)"


def _claim(claims, key):
    (c,) = [c for c in claims if c.key == key]
    return c


def _acc(groups, variants=None):
    claims = scorecard.judge_claims(groups, ("headline",), variants)
    return _claim(claims, "table4/accuracy")


def test_value_claim_reproduced_when_ours_sits_on_the_paper():
    acc = _acc({"proposed": _group(Y, 0.72)})
    assert acc.ci[0] <= acc.ours <= acc.ci[1] and acc.paper_inside
    assert acc.paper == 72.06 and acc.paper_support == 1656 and acc.scale == 100
    # the paper's own interval (Wilson on its 1,656 test knees) widens the gap's
    assert acc.paper_ci[1] - acc.paper_ci[0] == pytest.approx(4.3, abs=0.2)
    assert acc.gap_ci[1] - acc.gap_ci[0] > acc.ci[1] - acc.ci[0]
    assert acc.verdict == verdicts.REPRODUCED and acc.reason == ""


def test_a_shortfall_is_not_reproduced_with_the_deviations_listed():
    acc = _acc({"proposed": _group(Y, 0.55, **SCRATCH)})
    assert acc.verdict == verdicts.NOT_REPRODUCED
    for named in ("from scratch", "~32 s of training", "20/26/40 epochs",
                  "early stopping (patience 10)", "epoch chosen on these knees"):
        assert named in acc.reason and any(named in d for d in acc.deviations)
    # the same shortfall on runs trained like the paper's lists no handicap
    plain = _acc({"proposed": _group(Y, 0.55)})
    assert plain.verdict == verdicts.NOT_REPRODUCED and "scratch" not in plain.reason


def test_not_comparable_only_where_a_record_measures_the_explanation():
    low = {"proposed": _group(Y, 0.55, **SCRATCH)}
    short = {"early stopping": _group(Y, 0.60, seed=5)}
    assert _acc(low, {"proposed": short}).verdict == verdicts.NOT_REPRODUCED
    reach = {"early stopping": _group(Y, 0.72, seed=5)}
    r = _acc(low, {"proposed": reach})
    assert r.verdict == verdicts.NOT_COMPARABLE and r.reason.startswith("early stopping")
    one_seed = {"early stopping": _group(Y, 0.72, seeds=(1,), seed=5)}
    assert _acc(low, {"proposed": one_seed}).verdict == verdicts.NOT_REPRODUCED


def test_value_claim_above_the_paper_exceeds_it_even_with_a_handicap():
    assert _acc({"proposed": _group(Y, 0.85, **SCRATCH)}).verdict == verdicts.EXCEEDS


def test_value_claim_inconclusive_when_the_seeds_disagree():
    """One seed at 0.60, one at 0.72, one at 0.84: the mean sits on the paper, but three
    seeds this far apart leave the interval wide open (t = 4.30)."""
    r = _acc({"proposed": _group(Y, {1: 0.60, 2: 0.72, 3: 0.84})})
    assert r.ci[0] < 55 and r.ci[1] > 89
    assert r.verdict == verdicts.INCONCLUSIVE


def test_two_seeds_are_too_few_for_any_word():
    r = _acc({"proposed": _group(Y, 0.55, seeds=(1, 2))})
    assert r.verdict == verdicts.TOO_FEW_SEEDS and "proposed 2" in r.reason


def test_kl4_recall_is_a_floor_and_kl3_recall_a_ceiling():
    groups = {"proposed": {}}
    rng = np.random.default_rng(3)
    for s in (1, 2, 3):
        pred = np.where(rng.random(len(Y)) < 0.7, Y, (Y + 1) % 5)
        kl4 = np.flatnonzero(Y == 4)
        pred[kl4] = np.where(rng.random(len(kl4)) < 0.95, 4, 3)
        kl3 = np.flatnonzero(Y == 3)
        pred[kl3] = np.where(rng.random(len(kl3)) < 0.85, 3, 2)
        groups["proposed"][s] = {"grade": Y, "pred": pred, "gate_raw": None, **TRAINED}
    claims = scorecard.judge_claims(groups)
    kl4 = _claim(claims, "table4/recall/KL4")
    assert kl4.ours == pytest.approx(0.95, abs=0.03) and kl4.verdict == verdicts.EXCEEDS
    assert kl4.ci[1] <= 1.0  # a recall's interval stays inside [0, 1]
    # the paper says KL3 "remained difficult": recalling it far better does not reproduce that
    kl3 = _claim(claims, "table4/recall/KL3")
    assert kl3.direction == AT_MOST and kl3.verdict == verdicts.NOT_REPRODUCED
    assert _claim(claims, "table4/f1/KL1").paper == pytest.approx(0.6679)


def test_difference_claims_follow_the_rule_on_accuracy_and_macro_f1():
    groups = {"raw": _group(Y, 0.70, seed=1), "clahe": _group(Y, 0.50, seed=2),
              "dual-noattn": _group(Y, 0.50, seed=3)}
    claims = scorecard.judge_claims(groups)
    assert _claim(claims, "steps/accuracy/raw-clahe").verdict == verdicts.REPRODUCED
    assert _claim(claims, "steps/macro_f1/raw-clahe").verdict == verdicts.REPRODUCED
    assert _claim(claims, "steps/accuracy/dual-noattn-raw").verdict == verdicts.NOT_REPRODUCED
    groups["dual-noattn"] = _group(Y, 0.70, seed=4)
    claims = scorecard.judge_claims(groups)
    assert _claim(claims, "steps/accuracy/dual-noattn-raw").verdict == verdicts.INCONCLUSIVE


def test_a_step_whose_arms_trained_differently_is_confounded():
    """Proposed stopped early at 20 / 26 / 40 epochs, the plain dual stream ran 40 / 40 /
    36: their difference measures training length as much as cross-attention."""
    groups = {"proposed": _group(Y, 0.50, seed=1, epochs_run={1: 20, 2: 26, 3: 40}),
              "dual-noattn": _group(Y, 0.65, seed=2, epochs_run={1: 40, 2: 40, 3: 36})}
    c = _claim(scorecard.judge_claims(groups), "steps/accuracy/proposed-dual-noattn")
    assert c.verdict == verdicts.CONFOUNDED
    assert c.confounders == ("epochs run (20/26/40 against 40/40/36)",)
    groups["dual-noattn"] = _group(Y, 0.65, seed=2, hardware="other GPU",
                                   epochs_run={1: 20, 2: 26, 3: 40})
    c = _claim(scorecard.judge_claims(groups), "steps/accuracy/proposed-dual-noattn")
    assert c.verdict == verdicts.CONFOUNDED and c.confounders[0].startswith("hardware")


def test_a_step_that_rests_on_one_seed_is_inconclusive():
    """raw beats CLAHE by 20 points with seed 3 and loses by 2 with seeds 1 and 2: the mean
    is positive and the knee-only interval lies above 0, but not the seed-aware one."""
    groups = {"raw": _group(Y, {1: 0.58, 2: 0.58, 3: 0.80}, seed=1),
              "clahe": _group(Y, 0.60, seed=2)}
    r = _claim(scorecard.judge_claims(groups), "steps/accuracy/raw-clahe")
    assert r.ours > 2 and r.knee_ci[0] > 0
    assert r.ci[0] < 0 and r.verdict == verdicts.INCONCLUSIVE


def test_rows_the_paper_never_claimed_read_helps_hurts_or_too_few_seeds():
    groups = {"dual-noattn": _group(Y, 0.60, seed=1), "dual-gate": _group(Y, 0.70, seed=2),
              "proposed": _group(Y, 0.50, seed=3)}
    claims = scorecard.judge_claims(groups)
    assert _claim(claims, "ours/accuracy/dual-gate-dual-noattn").verdict == verdicts.HELPS
    assert _claim(claims, "ours/accuracy/proposed-dual-gate").verdict == verdicts.HURTS
    words = {c.verdict for c in claims if c.kind == "ours"}
    assert words <= {verdicts.HELPS, verdicts.HURTS, verdicts.INCONCLUSIVE}
    groups["dual-gate"] = _group(Y, 0.70, seeds=(1, 2), seed=2)
    claims = scorecard.judge_claims(groups)
    assert {c.verdict for c in claims if c.kind == "ours"} == {verdicts.TOO_FEW_SEEDS}


def test_kl3_confusion_threshold():
    pred = Y.copy()
    kl3 = np.flatnonzero(Y == 3)
    pred[kl3[: int(0.6 * len(kl3))]] = 2  # 60 % of KL3 called KL2: over the paper's 40 %
    runs = {s: {"grade": Y, "pred": pred, "gate_raw": None} for s in (1, 2, 3)}
    r = _claim(scorecard.judge_claims({"proposed": runs}), "text/kl3_off/proposed")
    assert r.ours == pytest.approx(0.6, abs=0.01) and r.verdict == verdicts.REPRODUCED
    pred = Y.copy()
    runs = {s: {"grade": Y, "pred": pred, "gate_raw": None} for s in (1, 2, 3)}
    r = _claim(scorecard.judge_claims({"proposed": runs}), "text/kl3_off/proposed")
    assert r.verdict == verdicts.NOT_REPRODUCED


def test_gate_claim_uses_the_gate_by_grade():
    def leaning(y, rng):
        return np.where(y >= 3, 0.7, 0.4) + rng.normal(0, 0.05, len(y))

    claims = scorecard.judge_claims({"proposed": _group(Y, 0.7, gate=leaning)})
    g = _claim(claims, "text/gate_lean/proposed")
    assert g.ours == pytest.approx(0.3, abs=0.02) and g.verdict == verdicts.REPRODUCED

    def flat(y, rng):
        return 0.5 + rng.normal(0, 0.05, len(y))

    claims = scorecard.judge_claims({"proposed": _group(Y, 0.7, gate=flat)})
    assert _claim(claims, "text/gate_lean/proposed").verdict == verdicts.INCONCLUSIVE


def test_every_row_that_needs_the_raw_image_is_not_testable_on_an_enhanced_copy():
    """One rule for values, per-grade rows, steps and the gate: every claim about a
    single-stream configuration (or the gate's leaning) on a copy enhanced upstream keeps
    its numbers and reads "not testable"; no other claim does; on the originals none."""
    def leaning(y, rng):
        return np.where(y >= 3, 0.7, 0.4) + rng.normal(0, 0.05, len(y))

    def groups(copy):
        return {"raw": _group(Y, 0.70, seed=1, copy=copy),
                "clahe": _group(Y, 0.50, seed=2, copy=copy),
                "dual-noattn": _group(Y, 0.50, seed=3, copy=copy),
                "proposed": _group(Y, 0.72, seed=4, gate=leaning, copy=copy)}

    claims = scorecard.judge_claims(groups(ENHANCED))
    off = {c.key for c in claims if c.verdict == verdicts.NOT_TESTABLE}
    need = {c.key for c in claims if scorecard.needs_raw(c.configs, c.metric)}
    assert off == need
    assert {"table3/recall/KL1", "table3/accuracy", "table5/accuracy/clahe",
            "steps/accuracy/raw-clahe", "steps/macro_f1/proposed-raw",
            "text/gate_lean/proposed"} <= off
    assert _claim(claims, "steps/accuracy/raw-clahe").ours > 0  # the number stays
    assert _claim(claims, "table4/accuracy").verdict == verdicts.REPRODUCED
    claims = scorecard.judge_claims(groups("original"))
    assert not any(c.verdict == verdicts.NOT_TESTABLE for c in claims)
    assert _claim(claims, "steps/accuracy/raw-clahe").verdict == verdicts.REPRODUCED
    assert _claim(claims, "text/gate_lean/proposed").verdict == verdicts.REPRODUCED
