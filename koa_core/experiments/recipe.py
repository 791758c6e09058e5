"""Beyond the paper without ImageNet: the from-scratch recipe and each lever, measured.

The paper starts from ImageNet weights; a model trained only on these knees has to close
the gap some other way. Each lever is a configuration of the ``recipe`` plan
(:mod:`koa_core.plans`), trained on the same seeds as Table 5's ``proposed`` runs, and is
compared with them on the same validation knees, with a seed-aware 95 % interval
(:mod:`koa_core.experiments.intervals`): a lever with several seeds seed by seed; a lever
run with one seed against the mean of every baseline seed, the baseline's spread between
seeds standing in for the lever's own
(:func:`~koa_core.experiments.intervals.borrowed_spread`), since one seed against the same
seed of the baseline would hide that spread. Levers that need no training are applied to a
configuration's records: test-time flip (the records keep those probabilities),
expected-grade decoding (the rounded mean grade instead of the most probable one), the
seed ensemble (the mean probabilities of a configuration's seeds) and a decision rule for
macro F1 (per-grade offsets fitted on half of the patients, applied to the other half).
Calibration (:mod:`koa_core.metrics.calibration`) is measured on the same records.

Each lever is judged as a row of ours (:func:`~koa_core.experiments.scorecard.compare`,
the rules of :data:`~koa_core.experiments.verdicts.RULES`), on validation accuracy and on
macro F1: ``too few seeds`` below three seeds; ``confounded`` where the lever's runs were
trained unlike the baseline's in more than the lever (another GPU, commit, epoch count);
else ``helps``, ``hurts`` or ``inconclusive``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from koa_core.errors import KoaError
from koa_core.experiments.ablation import paired_difference
from koa_core.experiments.groups import data_line, load_groups
from koa_core.experiments.intervals import borrowed_spread
from koa_core.experiments.scorecard import Claim, compare
from koa_core.experiments.verdicts import CONFOUNDED, RULES
from koa_core.metrics.calibration import calibration_report, patient_folds
from koa_core.metrics.classification import classification_metrics, confusion_scores

__all__ = ["GOALS", "LEVERS", "POST_HOC", "cross_fitted_offsets", "decode", "fit_offsets",
           "levers_table", "format_levers"]

BASELINE = "proposed"
TARGET = "recipe"

# (configuration, what it changes against Table 5's proposed run)
LEVERS = [
    ("full-schedule", "no early stop: the cosine schedule runs its 40 epochs"),
    ("long", "80 epochs, no early stop"),
    ("ema", "EMA of the weights (decay 0.99 per step)"),
    ("alpha-mean1", "Table 2's alpha rescaled to mean 1 over the training labels"),
    ("aux-alpha", "auxiliary samples weighted by alpha of their grade"),
    ("sord", "ordinal soft labels (SORD, scale 2)"),
    ("mixup", "mixup of knee pairs, lam ~ Beta(0.2, 0.2), both grades' losses mixed"),
    ("cutmix", "CutMix of knee pairs, lam ~ Beta(1, 1), both grades' losses mixed"),
    ("corn", "CORN ordinal head and loss (rank-consistent), knees weighted by alpha"),
    ("recipe", "the recipe: alpha-mean1 + EMA + SORD + 80 epochs, no early stop"),
]

# post-hoc levers: (name, what, decoding, flip, ensemble)
POST_HOC = [
    ("flip TTA", "mean of each knee and its mirror", "argmax", True, False),
    ("expected grade", "the rounded mean grade instead of the most probable", "expected",
     False, False),
    ("median grade", "the median grade instead of the most probable", "median", False, False),
    ("seed ensemble", "mean probabilities of the seeds", "argmax", False, True),
    ("seed ensemble + flip TTA", "both", "argmax", True, True),
]

# a decision rule fitted for macro F1 (cross-fitted: see :func:`cross_fitted_offsets`)
POST_HOC.append(("macro-F1 offsets", "per-grade log-probability offsets fitted for macro F1 "
                 "on the other half of the patients", "offsets", False, False))

# the goals of a model trained without ImageNet (validation, lossless copy)
GOALS = {"accuracy": 0.68, "macro_f1": 0.65, "qwk": 0.85, "kl4_recall": 0.78}


def fit_offsets(probs: np.ndarray, y: np.ndarray, grid=np.linspace(-2, 2, 41),
                sweeps: int = 3) -> np.ndarray:
    """Per-grade offsets ``b`` (KL0's fixed at 0) maximising the macro F1 of
    ``argmax(log p + b)`` on ``(probs, y)``: coordinate ascent over ``grid``, ties kept at
    the smaller offset. A prior shift: it trades recall between neighbouring grades."""
    logp = np.log(np.clip(probs, 1e-12, 1.0))
    k = probs.shape[1]
    b = np.zeros(k)
    y = np.asarray(y)

    def score(bb):  # macro F1 as the project computes it, from one confusion matrix
        cm = np.bincount(y * k + (logp + bb).argmax(1), minlength=k * k).reshape(1, k, k)
        return float(confusion_scores(cm)["macro_f1"][0])

    best = score(b)
    for _ in range(sweeps):
        for c in range(1, k):
            for v in grid:
                trial = b.copy()
                trial[c] = v
                f = score(trial)
                if f > best + 1e-12 or (abs(f - best) <= 1e-12 and abs(v) < abs(b[c])):
                    best, b = f, trial
    return b


def cross_fitted_offsets(probs: np.ndarray, y: np.ndarray, groups, folds: int = 2,
                         seed: int = 0) -> np.ndarray:
    """Grades decoded with :func:`fit_offsets` fitted on the other folds of patients, so
    no knee's grade comes from offsets fitted on it."""
    pred = np.empty(len(y), int)
    logp = np.log(np.clip(probs, 1e-12, 1.0))
    for fit_idx, apply_idx in patient_folds(groups, folds, seed):
        b = fit_offsets(probs[fit_idx], y[fit_idx])
        pred[apply_idx] = (logp[apply_idx] + b).argmax(1)
    return pred


def decode(probs: np.ndarray, how: str = "argmax") -> np.ndarray:
    """Grades from probabilities: ``argmax``, ``expected`` (round(sum_k k p_k)) or
    ``median`` (the smallest grade whose cumulative probability reaches 0.5: an ordinal
    decoding that, unlike the mean, is not pulled by a far tail; CORN's own decoding)."""
    if how == "argmax":
        return probs.argmax(1)
    if how == "expected":
        return np.clip(np.rint(probs @ np.arange(probs.shape[1])), 0, probs.shape[1] - 1
                       ).astype(int)
    if how == "median":
        return (np.cumsum(probs, 1) < 0.5).sum(1).clip(max=probs.shape[1] - 1)
    raise KoaError(f"decoding: {how!r} is not one of argmax, expected, median")


def _figures(y: np.ndarray, pred: np.ndarray, n_boot: int) -> dict:
    m = classification_metrics(y, pred, n_boot=n_boot)
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "qwk": m["qwk"],
            "mae": m["mae"], "kl4_recall": m["per_class"]["4"]["recall"],
            "recalls": [m["per_class"][str(g)]["recall"] for g in range(5)],
            "ci": m.get("ci", {})}


def _variant(by_seed: dict[int, dict], decoding: str, flip: bool, ensemble: bool
             ) -> dict[int, dict] | None:
    """Per seed: the predictions of a post-hoc variant (None if the records lack TTA)."""
    if flip and any(v.get("probs_flip") is None for v in by_seed.values()):
        return None
    probs = {s: (v["probs_flip"] if flip else v["probs"]) for s, v in by_seed.items()}
    if ensemble:
        mean = np.mean([probs[s] for s in sorted(probs)], axis=0)
        probs = {s: mean for s in probs}

    def grades(s):
        if decoding == "offsets":
            return cross_fitted_offsets(probs[s], by_seed[s]["grade"], by_seed[s]["patient"])
        return decode(probs[s], decoding)

    return {s: {**by_seed[s], "probs": probs[s], "pred": grades(s)} for s in by_seed}


def levers_table(records_dirs, n_boot: int = 2000, baseline: str = BASELINE,
                 target: str = TARGET) -> dict:
    """Every lever against ``baseline`` and the post-hoc levers on ``target``, from the
    records under ``records_dirs`` (one folder or several), plus the goals and the
    calibration of ``target``'s seed ensemble and of ``baseline``."""
    if isinstance(records_dirs, (str, Path)):
        records_dirs = [records_dirs]
    groups: dict[str, dict[int, dict]] = {}
    meta: dict[str, dict] = {}
    for d in records_dirs:
        g, m = load_groups(d)
        for k, v in g.items():
            groups.setdefault(k, {}).update(v)
        meta.update(m)
    if baseline not in groups:
        raise KoaError(f"no records of the baseline configuration {baseline!r} under "
                       f"{', '.join(map(str, records_dirs))}")
    y = next(iter(groups[baseline].values()))["grade"]
    rows = [_lever_row(name, what, groups, meta, baseline, y)
            for name, what in [(baseline, "Table 5's proposed setting (the baseline)")] + LEVERS
            if name in groups]
    post, best = _post_hoc(groups, target, n_boot) if target in groups else ([], None)
    base_seed = min(groups[baseline])
    b = groups[baseline][base_seed]
    return {"baseline": baseline, "target": target, "n": int(len(y)), "n_boot": n_boot,
            "levers": rows, "post_hoc": post, "best": best,
            "baseline_calibration": {"seed": base_seed, **calibration_report(
                b["probs"], b["grade"], b["patient"])}}


def _summary(by_seed: dict[int, dict]) -> dict:
    """Mean and SD over seeds of each figure, and the mean lowest and KL1 recalls."""
    ms = [_figures(v["grade"], v["pred"], 0) for v in by_seed.values()]
    out = {}
    for k in ("accuracy", "macro_f1", "qwk", "mae", "kl4_recall"):
        vals = np.array([m[k] for m in ms], float)
        out[k] = {"mean": float(vals.mean()),
                  "sd": float(vals.std(ddof=1)) if len(vals) > 1 else None}
    out["min_recall"] = float(np.mean([min(m["recalls"]) for m in ms]))
    out["kl1_recall"] = float(np.mean([m["recalls"][1] for m in ms]))
    return out


def _lever_row(name, what, groups, meta, baseline, y) -> dict:
    """One lever's figures, cost and (but for the baseline) its paired difference."""
    runs = groups[name]
    row = {"name": name, "what": what, "seeds": sorted(runs),
           "hardware": meta[name]["hardware"], "copy": meta[name]["copy"],
           "encoding": meta[name]["encoding"], **_summary(runs),
           "epochs_run": float(np.mean([v["epochs_run"] for v in runs.values()])),
           "wall_s": float(sum(v["wall_s"] or 0 for v in runs.values())),
           "img_s": float(np.median([v["img_s"] for v in runs.values()
                                     if v["img_s"]] or [np.nan]))}
    if name != baseline:
        row["vs_baseline"] = _versus(name, runs, groups[baseline], baseline, y)
    return row


def _judged(c: Claim) -> dict:
    return {"value": c.ours, "ci": list(c.ci), "knee_ci": list(c.knee_ci),
            "verdict": c.verdict, "reason": c.reason}


def _versus(name: str, runs: dict[int, dict], base: dict[int, dict], baseline: str,
            y: np.ndarray) -> dict:
    """A lever against the baseline (:func:`~koa_core.experiments.scorecard.compare`,
    judged as a row of ours): seed by seed where it has several seeds, else its one seed
    against every baseline seed with the baseline's seed spread borrowed (a row that reads
    "too few seeds")."""
    one = len(runs) == 1 and len(base) > 1
    acc, f1 = (compare(f"levers/{k}/{name}", f"{name} - {baseline}", runs, base, k, "ours",
                       (name, baseline), section="levers",
                       estimate=borrowed_spread(next(iter(runs.values())), base, k)
                       if one else None) for k in ("accuracy", "macro_f1"))
    seeds, against = (sorted(runs), sorted(base)) if one else (list(acc.seeds),) * 2
    how = (f"one seed against the mean of the baseline's {len(base)} seeds, their spread "
           "borrowed" if one else f"paired by seed ({len(seeds)})")
    matched = [float((base[s]["pred"] == y).mean()) for s in against]
    a, f = _judged(acc), _judged(f1)
    return {"seeds": seeds, "against": against, "method": how,
            "accuracy": a["value"] / 100, "accuracy_ci": [v / 100 for v in a["ci"]],
            "accuracy_knee_ci": [v / 100 for v in a["knee_ci"]], "macro_f1": f["value"],
            "macro_f1_ci": f["ci"], "verdict": a["verdict"], "reason": a["reason"],
            "verdict_macro_f1": f["verdict"], "baseline_accuracy": float(np.mean(matched))}


def _post_hoc(groups, target: str, n_boot: int) -> tuple[list[dict], dict]:
    """The post-hoc levers on ``target`` against its plain argmax, and the goals of its
    seed ensemble (with flip TTA where the records allow it) with 95 % intervals over knees."""
    post = []
    plain = _variant(groups[target], "argmax", False, False)
    for name, what, decoding, flip, ensemble in POST_HOC:
        v = _variant(groups[target], decoding, flip, ensemble)
        if v is None:
            continue
        d = paired_difference(v, plain, n_boot=n_boot)  # QWK and MAE differences
        acc = _judged(compare(f"post-hoc/accuracy/{name}", f"{name} - plain", v, plain,
                              "accuracy", "ours", (name, target), section="post-hoc"))
        d.update(accuracy=acc["value"] / 100, accuracy_ci=[x / 100 for x in acc["ci"]],
                 verdict=acc["verdict"], reason=acc["reason"])  # seed-aware, judged
        post.append({"name": name, "what": what, "of": target, "seeds": sorted(v),
                     **_summary(v), "vs_plain": d})
    ens = (_variant(groups[target], "argmax", True, True)
           or _variant(groups[target], "argmax", False, True))
    one = next(iter(ens.values()))
    figs = _figures(one["grade"], one["pred"], n_boot)
    best = {"model": f"{target} seed ensemble"
            + (" + flip TTA" if groups[target][min(groups[target])].get("probs_flip")
               is not None else ""),
            "figures": figs,
            "goals": {k: {"goal": g, "value": figs[k], "met": figs[k] >= g,
                          "ci": figs["ci"].get(k)} for k, g in GOALS.items()},
            "calibration": calibration_report(one["probs"], one["grade"], one["patient"])}
    return post, best


def format_levers(t: dict) -> str:
    """Plain-text table of the levers, the post-hoc levers and the goals."""
    def pm(s, digits=3):
        return (f"{s['mean']:.{digits}f}" if s["sd"] is None
                else f"{s['mean']:.{digits}f} ± {s['sd']:.{digits}f}")

    lines = [f"{'lever':<26}{'seeds':>6}{'val accuracy':>17}{'macro F1':>17}{'QWK':>17}"
             f"{'MAE':>17}{'KL1 rec':>9}   accuracy vs {t['baseline']} (points, seed-aware "
             "95 % CI)"]
    for r in t["levers"]:
        d = r.get("vs_baseline")
        diff = ("-" if d is None else
                f"{100 * d['accuracy']:+.2f} [{100 * d['accuracy_ci'][0]:+.2f}, "
                f"{100 * d['accuracy_ci'][1]:+.2f}] {d['verdict']}"
                + (f" ({d['reason']})" if d["verdict"] == CONFOUNDED else "") + "; macro F1 "
                f"{d['verdict_macro_f1']} (baseline {d['baseline_accuracy']:.3f}; "
                f"{d['method']})")
        lines.append(f"{r['name']:<26}{len(r['seeds']):>6}{pm(r['accuracy']):>17}"
                     f"{pm(r['macro_f1']):>17}{pm(r['qwk']):>17}{pm(r['mae']):>17}"
                     f"{r['kl1_recall']:>9.2f}   {diff}")
    if t["post_hoc"]:
        lines += ["", f"post-hoc, on {t['target']} (vs its plain predictions)"]
        for r in t["post_hoc"]:
            d = r["vs_plain"]
            lines.append(f"{r['name']:<26}{len(r['seeds']):>6}{pm(r['accuracy']):>17}"
                         f"{pm(r['macro_f1']):>17}{pm(r['qwk']):>17}{pm(r['mae']):>17}"
                         f"{r['kl1_recall']:>9.2f}   {100 * d['accuracy']:+.2f} "
                         f"[{100 * d['accuracy_ci'][0]:+.2f}, {100 * d['accuracy_ci'][1]:+.2f}]"
                         f" {d['verdict']}")
    if t["best"]:
        lines += ["", f"goals ({t['best']['model']}):"]
        for k, g in t["best"]["goals"].items():
            ci = g["ci"]
            ci_s = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
            lines.append(f"  {k}: {g['value']:.3f}{ci_s} (goal {g['goal']:.2f}: "
                         f"{'met' if g['met'] else 'not met'})")
        c = t["best"]["calibration"]
        lines.append(f"  calibration: ECE {c['before']['ece']:.3f} -> {c['after']['ece']:.3f} "
                     f"with a cross-fitted temperature (fold T "
                     f"{', '.join(f'{v:.2f}' for v in c['fold_temperatures'])})")
    lines.append("verdicts (the first rule that applies; a lever is a row of ours):")
    lines += [f"  {r.word}: {r.when}" for r in RULES if r.kinds in ("every kind", "rows of ours")
              or r.word == CONFOUNDED]
    hw = sorted({r["hardware"] for r in t["levers"]})
    lines.append(f"hardware: {'; '.join(hw)}; data: {data_line(t['levers'])}")
    return "\n".join(lines)
