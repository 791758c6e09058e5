"""The claim-by-claim scorecard: the stated rule on crafted predictions."""

import numpy as np
import pytest

from koa_core.experiments import scorecard


def _group(y, rate, seeds=(1, 2, 3), seed=0, gate=None):
    rng = np.random.default_rng(seed)
    out = {}
    for s in seeds:
        right = rng.random(len(y)) < rate
        pred = np.where(right, y, (y + rng.integers(1, 5, len(y))) % 5)
        out[s] = {"grade": y, "pred": pred, "path": [f"val/{g}/{i}" for i, g in enumerate(y)],
                  "gate_raw": None if gate is None else gate(y, rng)}
    return out


Y = np.repeat(np.arange(5), [300, 150, 200, 100, 50])


def _row(rows, text):
    (r,) = [r for r in rows if text in r["claim"]]
    return r


def test_value_claims_follow_the_rule():
    rows = scorecard.claim_rows({"proposed": _group(Y, 0.72)}, n_boot=300)
    acc = _row(rows, "accuracy of the proposed")
    assert acc["ci_low"] <= acc["ours"] <= acc["ci_high"]
    assert acc["verdict"] == "reproduced" and acc["paper_inside"]  # 72 % vs the paper's 72.06
    rows = scorecard.claim_rows({"proposed": _group(Y, 0.55)}, n_boot=300)
    assert _row(rows, "accuracy of the proposed")["verdict"] == "not reproduced"


def test_difference_claims_follow_the_rule():
    groups = {"raw": _group(Y, 0.70, seed=1), "clahe": _group(Y, 0.50, seed=2),
              "dual-noattn": _group(Y, 0.50, seed=3)}
    rows = scorecard.claim_rows(groups, n_boot=300)
    assert _row(rows, "raw - clahe")["verdict"] == "reproduced"
    assert _row(rows, "dual-noattn - raw")["verdict"] == "not reproduced"
    groups["dual-noattn"] = _group(Y, 0.70, seed=4)
    rows = scorecard.claim_rows(groups, n_boot=300)
    assert _row(rows, "dual-noattn - raw")["verdict"] == "inconclusive"


def test_gate_claim_uses_the_gate_by_grade():
    def leaning(y, rng):
        return np.where(y >= 3, 0.7, 0.4) + rng.normal(0, 0.05, len(y))

    rows = scorecard.claim_rows({"proposed": _group(Y, 0.7, gate=leaning)}, n_boot=300)
    g = _row(rows, "gate")
    assert g["ours"] == pytest.approx(0.3, abs=0.02) and g["verdict"] == "reproduced"

    def flat(y, rng):
        return 0.5 + rng.normal(0, 0.05, len(y))

    rows = scorecard.claim_rows({"proposed": _group(Y, 0.7, gate=flat)}, n_boot=300)
    assert _row(rows, "gate")["verdict"] == "inconclusive"


def test_config_interval_kl4_recall():
    y = np.array([4] * 10 + [0] * 10)
    pred = np.array([4] * 7 + [0] * 3 + [0] * 10)
    v, ci = scorecard.config_interval({1: {"grade": y, "pred": pred}}, "kl4_recall", 500)
    assert v == pytest.approx(0.7) and ci[0] < 0.7 < ci[1]


def test_stream_claims_on_an_enhanced_copy_are_not_testable():
    """On records whose data.copy is an upstream-CLAHE copy, raw vs CLAHE (and the two
    single-stream accuracies) and the gate's leaning keep their numbers but not a verdict;
    the other claims keep theirs, and the same records on the originals get the rule's."""
    def leaning(y, rng):
        return np.where(y >= 3, 0.7, 0.4) + rng.normal(0, 0.05, len(y))

    groups = {"raw": _group(Y, 0.70, seed=1), "clahe": _group(Y, 0.50, seed=2),
              "dual-noattn": _group(Y, 0.50, seed=3),
              "proposed": _group(Y, 0.72, seed=4, gate=leaning)}
    enh = "clahe-5.0-8x8 (enhanced upstream)"
    rows = scorecard.claim_rows(groups, n_boot=200, copies={g: enh for g in groups})
    off = {r["claim"] for r in rows if r["verdict"] == scorecard.NOT_TESTABLE}
    assert off == {_row(rows, t)["claim"] for t in ("raw - clahe", "CLAHE-only accuracy",
                                                   "raw-only (baseline) accuracy", "w_raw(KL3-4)")}
    assert _row(rows, "raw - clahe")["ours"] > 0  # the number stays
    assert _row(rows, "dual-noattn - raw")["verdict"] == "not reproduced"
    assert _row(rows, "accuracy of the proposed")["verdict"] == "reproduced"
    for copies in ({g: "original" for g in groups}, None):
        rows = scorecard.claim_rows(groups, n_boot=200, copies=copies)
        assert not any(r["verdict"] == scorecard.NOT_TESTABLE for r in rows)
        assert _row(rows, "raw - clahe")["verdict"] == "reproduced"
        assert _row(rows, "w_raw(KL3-4)")["verdict"] == "reproduced"
