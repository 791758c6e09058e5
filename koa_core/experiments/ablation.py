"""The answer to Table 5 (paper §3.2), computed from result records.

Per configuration: mean and sample standard deviation over seeds of the validation
figures of each run's selected epoch, and beside them the last epoch's and the mean of the
epochs around the selected one (:func:`~koa_core.experiments.groups.selection_bias`: an
epoch chosen on the knees that score it flatters them). Per step of the paper's Table 5
and per row of ours: the claims of :func:`koa_core.experiments.scorecard.judge_claims`
(seed-paired differences in accuracy and macro F1, each with its seed-aware interval and
its verdict), so that ``koa ablation`` and the landing page print the same word on every
row.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from koa_core.errors import KoaError
from koa_core.experiments.groups import data_line, load_groups, selection_bias
from koa_core.experiments.scorecard import judge_claims
from koa_core.experiments.verdicts import RULES
from koa_core.metrics.classification import confusion_scores
from koa_core.paper import TABLE5

__all__ = ["ROWS", "ablation_table", "format_ablation", "in_row_order", "paired_difference",
           "to_json"]

# Table 5's rows in the order every table and figure shows them (dual-gate is ours)
ROWS = ("clahe", "raw", "dual-noattn", "dual-gate", "proposed")


def in_row_order(configs) -> list[str]:
    """``configs`` in :data:`ROWS` order, any other configuration after them by name."""
    return sorted(configs, key=lambda g: (ROWS.index(g) if g in ROWS else len(ROWS), g))


def boot_scores(y: np.ndarray, pred: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, ...]:
    """Accuracy, macro F1, QWK and MAE for each bootstrap row of knee indices ``idx``
    (B, n)."""
    yi, pi = y[idx], pred[idx]
    b = idx.shape[0]
    # one confusion matrix per row, counted by bincount over (row, true, predicted) cells
    cells = (np.arange(b)[:, None] * 25 + yi * 5 + pi).ravel()
    cm = np.bincount(cells, minlength=b * 25).reshape(b, 5, 5)  # confusion_scores casts
    s = confusion_scores(cm)
    return s["accuracy"], s["macro_f1"], s["qwk"], np.abs(yi - pi).mean(1)


def paired_difference(a: dict[int, dict], b: dict[int, dict], n_boot: int = 2000,
                      seed: int = 0) -> dict:
    """``a`` minus ``b``: {seed: predictions} of two configurations on the same knees."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise KoaError("no seed is shared by the two configurations")
    y = a[seeds[0]]["grade"]
    for s in seeds:
        if not (np.array_equal(a[s]["grade"], y) and np.array_equal(b[s]["grade"], y)
                and a[s]["path"] == b[s]["path"] == a[seeds[0]]["path"]):
            raise KoaError("records of different validation knees cannot be paired")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y), size=(n_boot, len(y)))
    full = np.arange(len(y))[None]
    names = ("accuracy", "macro_f1", "qwk", "mae")
    boot = [0.0] * len(names)
    point = [0.0] * len(names)
    for s in seeds:
        sa, sb = boot_scores(y, a[s]["pred"], idx), boot_scores(y, b[s]["pred"], idx)
        fa, fb = boot_scores(y, a[s]["pred"], full), boot_scores(y, b[s]["pred"], full)
        for i in range(len(names)):
            boot[i] = boot[i] + (sa[i] - sb[i])
            point[i] += float(fa[i][0] - fb[i][0])
    k = len(seeds)
    out = {"seeds": seeds, "n": int(len(y))}
    for i, name in enumerate(names):
        out[name] = point[i] / k
        out[name + "_ci"] = np.percentile(boot[i] / k, [2.5, 97.5]).tolist()
    return out


def _stat(values) -> dict:
    v = np.array(values, float)
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else None}


def _configuration(name: str, by_seed: dict[int, dict], meta: dict, bias) -> dict:
    ms = [by_seed[s]["metrics"] for s in sorted(by_seed)]
    runs = [by_seed[s] for s in sorted(by_seed)]
    return {"seeds": sorted(by_seed), **meta,
            "accuracy": _stat([m["accuracy"] for m in ms]),
            "seed_accuracy": [m["accuracy"] for m in ms],
            "macro_f1": _stat([m["macro_f1"] for m in ms]),
            "qwk": _stat([m["qwk"] for m in ms]),
            "kl4_recall": _stat([m["per_class"]["4"]["recall"] for m in ms]),
            "min_recall": _stat([min(m["per_class"][str(c)]["recall"] for c in range(5))
                                 for m in ms]),
            "epochs_run": _stat([r["epochs_run"] for r in runs]),
            "selected_epoch": _stat([r["epoch"] for r in runs]),
            "img_s": _stat([r["img_s"] for r in runs if r["img_s"]] or [np.nan]),
            "selection": None if bias is None else asdict(bias),
            "paper_test_accuracy": TABLE5.get(name)}


def ablation_table(records_dir: str | Path) -> dict:
    """Per-configuration means and the judged steps, from the records under a folder."""
    groups, meta = load_groups(records_dir)
    if not groups:
        raise KoaError(f"{records_dir}: no complete records")
    bias = {b.config: b for b in selection_bias(groups)}
    rows = {g: _configuration(g, by_seed, meta[g], bias.get(g)) for g, by_seed in groups.items()}
    # through JSON: the table is what `koa ablation --json` prints and results/ keeps
    claims = json.loads(json.dumps([asdict(c) for c in judge_claims(groups, ("table 5",))]))
    return {"configurations": rows, "claims": claims}


def _pm(s: dict, scale: float = 1.0, digits: int = 3) -> str:
    if s["sd"] is None:
        return f"{s['mean'] * scale:.{digits}f}"
    return f"{s['mean'] * scale:.{digits}f} ± {s['sd'] * scale:.{digits}f}"


def _claim_line(c: dict) -> str:
    """One judged step: the difference, its interval, each seed's, the paper's, the word
    and what decided it."""
    pts = c["metric"] == "accuracy"
    f = (lambda v: f"{v:+.2f}") if pts else (lambda v: f"{v:+.3f}")
    paper = "" if c["paper"] is None else f"; paper {f(c['paper'])}"
    why = f" ({c['reason']})" if c["reason"] else ""
    return (f"  {' - '.join(c['configs'])}, {'accuracy points' if pts else 'macro F1'}: "
            f"{f(c['ours'])} [{f(c['ci'][0])}, {f(c['ci'][1])}] (seeds "
            + " ".join(f(v) for v in c["per_seed"]) + f"{paper}) -> {c['verdict']}{why}")


def format_ablation(t: dict) -> str:
    """Plain-text Table 5, the epoch choice beside the last epoch, and the judged steps."""
    names = in_row_order(t["configurations"])
    lines = [f"{'configuration':<14}{'seeds':>6}{'val accuracy':>18}{'macro F1':>18}"
             f"{'QWK':>18}{'KL4 recall':>18}{'paper test acc':>16}"]
    for g in names:
        r = t["configurations"][g]
        paper = f"{r['paper_test_accuracy']:.2f} %" if r["paper_test_accuracy"] else "-"
        lines.append(f"{g:<14}{len(r['seeds']):>6}{_pm(r['accuracy']):>18}"
                     f"{_pm(r['macro_f1']):>18}{_pm(r['qwk']):>18}{_pm(r['kl4_recall']):>18}"
                     f"{paper:>16}")
    lines += ["", "macro F1 at the epoch chosen on these validation knees / mean of the "
              "epochs around it / at the last epoch (means over seeds)"]
    for g in names:
        sel = t["configurations"][g]["selection"]
        if sel:
            lines.append(f"  {g:<14}" + " / ".join(f"{v:.3f}" for v in sel["macro_f1"])
                         + ("" if sel["chosen_on_val"] else "  (fixed length: the last epoch)"))
    lines += ["", "steps (seed-paired differences; 95 % interval: seed part t(k-1)·s/√k and "
              "knee part added in quadrature; each seed's difference in parentheses)"]
    lines += [_claim_line(c) for c in t["claims"]]
    lines.append("verdicts (the first rule that applies):")
    lines += [f"  {r.word} ({r.kinds}): {r.when}" for r in RULES]
    hw = sorted({r["hardware"] for r in t["configurations"].values()})
    lines.append(f"hardware: {'; '.join(hw)}; data: {data_line(t['configurations'].values())}")
    return "\n".join(lines)


def to_json(t: dict) -> str:
    return json.dumps(t, indent=1)
