"""The answer to Table 5 (paper §3.2), computed from result records.

Per configuration: mean and sample standard deviation over seeds of the validation
figures of each run's selected epoch. Per step of the paper's Table 5: the seed-paired
difference between two configurations (seed s of one against seed s of the other,
averaged over the seeds both have) with a seed-aware 95 % interval
(:mod:`koa_core.experiments.intervals`: each resample draws the validation knees and then
the seeds), for accuracy and for macro F1, each with a verdict
(:mod:`koa_core.experiments.verdicts`):

* a step the paper claims: ``reproduced`` if the interval lies above zero, ``not
  reproduced`` if below, ``inconclusive`` if it contains zero;
* a row of ours the paper never claimed (the gate alone, cross-attention on top of the
  gate): ``helps``, ``hurts`` or ``inconclusive``.

Whether the paper's magnitude lies inside the interval is reported beside the verdict.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from koa_core.errors import KoaError
from koa_core.experiments.records import find_records, read_record, record_copy
from koa_core.experiments.intervals import seed_difference
from koa_core.experiments.verdicts import ablation_verdict, difference_verdict
from koa_core.metrics.classification import confusion_scores

__all__ = ["CLAIMS", "PAPER_TABLE5", "ablation_table", "data_line", "format_ablation",
           "load_groups", "paired_difference"]

# Table 5 of the paper: test accuracy (%) per configuration.
PAPER_TABLE5 = {"clahe": 61.84, "raw": 65.10, "dual-noattn": 70.47, "proposed": 72.06}

# (better, worse, the paper's accuracy difference in points or None, what it tests)
CLAIMS = [
    ("raw", "clahe", 3.26, "raw-only beats CLAHE-only"),
    ("dual-noattn", "raw", 5.37, "dual stream (no attention) beats raw-only"),
    ("proposed", "dual-noattn", 1.59, "cross-attention + gate beat the plain dual stream"),
    ("dual-gate", "dual-noattn", None, "the learned gate alone (no cross-attention)"),
    ("proposed", "dual-gate", None, "cross-attention on top of the learned gate"),
]


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


def load_groups(records_dir: str | Path) -> tuple[dict[str, dict[int, dict]], dict]:
    """The records under a folder as {configuration: {seed: predictions + figures}} (the
    configuration and seed from the provenance, else from the name ``NAME-sSEED``), and
    {configuration: hardware, data copy (None in records from before it), data encoding,
    commit}."""
    groups: dict[str, dict[int, dict]] = {}
    meta: dict[str, dict] = {}
    for path in find_records(records_dir):
        rec = read_record(path)
        prov = rec["provenance"]
        group = prov.get("group") or re.sub(r"-s\d+$", "", rec["name"])
        m = re.search(r"-s(\d+)$", rec["name"])
        seed = int(prov.get("seed") or (m.group(1) if m else rec["config"]["train"]["seed"]))
        groups.setdefault(group, {})[seed] = {**rec["predictions"],
                                              "metrics": rec["selected"]["val_metrics"],
                                              "epoch": rec["selected"]["epoch"],
                                              "epochs_run": len(rec["history"]),
                                              "img_s": prov.get("train_img_s"),
                                              "wall_s": prov.get("wall_s")}
        meta.setdefault(group, {"hardware": prov["machine"]["hardware"],
                                "copy": record_copy(prov),
                                "encoding": prov["data"]["encoding"],
                                "commit": prov["commit"],
                                "pretrained": (rec["config"].get("model") or {}).get(
                                    "pretrained")})
    return groups, meta


def ablation_table(records_dir: str | Path, n_boot: int = 2000) -> dict:
    """Per-configuration means and the paper's claims, from the records under a folder."""
    groups, meta = load_groups(records_dir)
    if not groups:
        raise KoaError(f"{records_dir}: no complete records")
    rows = {}
    for g, by_seed in groups.items():
        ms = [v["metrics"] for v in by_seed.values()]

        def stat(values):
            v = np.array(values, float)
            return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else None}

        rows[g] = {
            "seeds": sorted(by_seed), **meta[g],
            "accuracy": stat([m["accuracy"] for m in ms]),
            "seed_accuracy": [by_seed[s]["metrics"]["accuracy"] for s in sorted(by_seed)],
            "macro_f1": stat([m["macro_f1"] for m in ms]),
            "qwk": stat([m["qwk"] for m in ms]),
            "kl4_recall": stat([m["per_class"]["4"]["recall"] for m in ms]),
            "min_recall": stat([min(m["per_class"][str(c)]["recall"] for c in range(5))
                                for m in ms]),
            "epochs_run": stat([v["epochs_run"] for v in by_seed.values()]),
            "selected_epoch": stat([v["epoch"] for v in by_seed.values()]),
            "img_s": stat([v["img_s"] for v in by_seed.values() if v["img_s"]]),
            "paper_test_accuracy": PAPER_TABLE5.get(g),
        }
    claims = [_step(groups, better, worse, paper, what, n_boot)
              for better, worse, paper, what in CLAIMS
              if better in groups and worse in groups]
    return {"configurations": rows, "claims": claims, "n_boot": n_boot}


def _step(groups: dict, better: str, worse: str, paper: float | None, what: str,
          n_boot: int) -> dict:
    """One step of Table 5: seed-aware differences in accuracy and macro F1, verdicts."""
    acc = seed_difference(groups[better], groups[worse], "accuracy", n_boot)
    f1 = seed_difference(groups[better], groups[worse], "macro_f1", n_boot)
    judge = difference_verdict if paper is not None else ablation_verdict
    return {"better": better, "worse": worse, "claim": what, "paper_accuracy_points": paper,
            "seeds": acc["seed_ids"], "n": int(len(groups[better][acc["seed_ids"][0]]["grade"])),
            "accuracy": acc["value"], "accuracy_ci": acc["ci"],
            "accuracy_knee_ci": acc["knee_ci"], "accuracy_per_seed": acc["per_seed"],
            "macro_f1": f1["value"], "macro_f1_ci": f1["ci"],
            "macro_f1_per_seed": f1["per_seed"],
            "verdict": judge(acc["ci"]), "verdict_macro_f1": judge(f1["ci"]),
            "paper_inside_interval": (None if paper is None else
                                      acc["ci"][0] * 100 <= paper <= acc["ci"][1] * 100)}


def _pm(s: dict, scale: float = 1.0, digits: int = 3) -> str:
    if s["sd"] is None:
        return f"{s['mean'] * scale:.{digits}f}"
    return f"{s['mean'] * scale:.{digits}f} ± {s['sd'] * scale:.{digits}f}"


def format_ablation(t: dict) -> str:
    """Plain-text Table 5 and the claims."""
    order = ["clahe", "raw", "dual-noattn", "dual-gate", "proposed"]
    names = sorted(t["configurations"], key=lambda g: (order.index(g) if g in order else 99, g))
    lines = [f"{'configuration':<14}{'seeds':>6}{'val accuracy':>18}{'macro F1':>18}"
             f"{'QWK':>18}{'KL4 recall':>18}{'paper test acc':>16}"]
    for g in names:
        r = t["configurations"][g]
        paper = f"{r['paper_test_accuracy']:.2f} %" if r["paper_test_accuracy"] else "-"
        lines.append(f"{g:<14}{len(r['seeds']):>6}{_pm(r['accuracy']):>18}"
                     f"{_pm(r['macro_f1']):>18}{_pm(r['qwk']):>18}{_pm(r['kl4_recall']):>18}"
                     f"{paper:>16}")
    lines.append("")
    lines.append("paired differences (seed-matched; seed-aware 95 % interval: validation "
                 "knees, then seeds, resampled; accuracy in points; each seed's difference "
                 "in parentheses)")
    for c in t["claims"]:
        lo, hi = (100 * v for v in c["accuracy_ci"])
        paper = (f"paper +{c['paper_accuracy_points']:.2f}" if c["paper_accuracy_points"]
                 is not None else "paper -")
        lines.append(f"  {c['better']} - {c['worse']}: {100 * c['accuracy']:+.2f} "
                     f"[{lo:+.2f}, {hi:+.2f}] (seeds "
                     + " ".join(f"{100 * v:+.2f}" for v in c["accuracy_per_seed"])
                     + f"; {paper}); macro F1 {c['macro_f1']:+.3f} "
                     f"[{c['macro_f1_ci'][0]:+.3f}, {c['macro_f1_ci'][1]:+.3f}] -> "
                     f"{c['verdict']} (accuracy), {c['verdict_macro_f1']} (macro F1)")
    lines.append("verdict: a step the paper claims is reproduced if the interval lies above 0, "
                 "not reproduced if below, inconclusive if it contains 0; a row of ours the "
                 "paper never claimed helps, hurts or is inconclusive")
    hw = sorted({r["hardware"] for r in t["configurations"].values()})
    lines.append(f"hardware: {'; '.join(hw)}; data: {data_line(t['configurations'].values())}")
    return "\n".join(lines)


def data_line(rows) -> str:
    """The data the rows' records saw, in words: the copy (or copies) of the images and
    how they travelled, e.g. ``copy original; val: as stored; train: ...``."""
    rows = list(rows)
    copies = sorted({r.get("copy") or "not named (record from before data.copy)"
                     for r in rows})
    enc = sorted({r["encoding"] for r in rows})
    return f"{'copies' if len(copies) > 1 else 'copy'} {' + '.join(copies)}; {'; '.join(enc)}"


def to_json(t: dict) -> str:
    return json.dumps(t, indent=1)
