"""Beyond the paper: the from-scratch recipe's levers (:mod:`koa_core.experiments.recipe`) and the
calibration of the grade probabilities (:mod:`koa_core.metrics.calibration`), as tables, figures
and sentences computed from the numbers beside them.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pandas as pd

from koa_core.experiments.campaign import run_campaign

__all__ = ["calibration_table", "goals_table", "levers_figure", "levers_frame",
           "levers_summary", "post_hoc_frame", "reliability_figure", "train_recipe"]


def train_recipe(plans, data_root, runs_dir, sets=()) -> Path:
    """Run each plan spec (``PLAN`` or ``PLAN:RUN,RUN``) with :func:`koa_core.experiments.campaign.
    run_campaign` into one records folder under ``runs_dir``; finished runs are reused.
    Returns the records folder."""
    base = Path(runs_dir) / "recipe"
    phantom = not data_root or "phantom" in Path(data_root).name
    copy = "phantom" if phantom else "original"  # the book's root: the public download
    for spec in plans:
        plan, _, only = spec.partition(":")
        names = only.split(",") if only else None
        command = shlex.join(
            ["koa", "campaign", plan, *(["--data", str(data_root)] if data_root else []),
             "--runs", str(base / "runs"), "--records", str(base / "records"),
             "--data-copy", copy]
            + [a for n in names or [] for a in ("--only", n)]
            + [a for v in sets for a in ("--set", v)])
        run_campaign(plan, str(data_root) if data_root else None, base / "runs",
                     base / "records", only=names, overrides=list(sets), command=command,
                     data_encoding="synthetic phantom" if phantom else "as stored",
                     data_copy=copy,
                     echo=lambda *a: None)
    return base / "records"


def _pm(s: dict, d: int = 3) -> str:
    return f"{s['mean']:.{d}f}" if s["sd"] is None else f"{s['mean']:.{d}f} ± {s['sd']:.{d}f}"


def _diff(d: dict) -> str:
    return (f"{100 * d['accuracy']:+.1f} [{100 * d['accuracy_ci'][0]:+.1f}, "
            f"{100 * d['accuracy_ci'][1]:+.1f}]")


def levers_frame(t: dict) -> pd.DataFrame:
    """One row per trained lever: figures over its seeds and its accuracy difference to
    the baseline runs of the same seeds."""
    rows = []
    for r in t["levers"]:
        d = r.get("vs_baseline")
        rows.append({
            "configuration": r["name"], "changes": r["what"], "seeds": len(r["seeds"]),
            "val accuracy": _pm(r["accuracy"]), "macro F1": _pm(r["macro_f1"]),
            "QWK": _pm(r["qwk"]), "MAE": _pm(r["mae"]), "KL1 recall": f"{r['kl1_recall']:.2f}",
            f"vs {t['baseline']} (points)": "-" if d is None else _diff(d),
            "compared": "-" if d is None else d["method"],
            f"{t['baseline']} accuracy (seeds compared)": ("-" if d is None else
                                                          f"{d['baseline_accuracy']:.3f}"),
            "verdict (accuracy)": "-" if d is None else d["verdict"],
            "verdict (macro F1)": "-" if d is None else d["verdict_macro_f1"],
            "GPU s": f"{r['wall_s']:.0f}", "epochs": f"{r['epochs_run']:.0f}",
        })
    return pd.DataFrame(rows).set_index("configuration")


def post_hoc_frame(t: dict) -> pd.DataFrame:
    rows = [{"post-hoc lever": r["name"], "what": r["what"], "val accuracy": _pm(r["accuracy"]),
             "macro F1": _pm(r["macro_f1"]), "QWK": _pm(r["qwk"]), "MAE": _pm(r["mae"]),
             "KL1 recall": f"{r['kl1_recall']:.2f}",
             f"vs {t['target']} (points)": _diff(r["vs_plain"]),
             "verdict": r["vs_plain"]["verdict"]}
            for r in t["post_hoc"]]
    return pd.DataFrame(rows).set_index("post-hoc lever") if rows else pd.DataFrame()


def goals_table(t: dict) -> pd.DataFrame:
    if not t["best"]:
        return pd.DataFrame()
    rows = []
    for k, g in t["best"]["goals"].items():
        ci = g["ci"]
        rows.append({"figure": k, "goal": f">= {g['goal']:.2f}", "value": f"{g['value']:.3f}",
                     "95 % interval": f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "-",
                     "met": "yes" if g["met"] else "no"})
    return pd.DataFrame(rows).set_index("figure")


def levers_figure(t: dict):
    """Accuracy difference of each lever (trained: vs the baseline; post-hoc: vs the
    recipe's plain predictions) with its 95 % interval."""
    import matplotlib.pyplot as plt

    items = [(r["name"], r["vs_baseline"]) for r in t["levers"] if "vs_baseline" in r]
    items += [(f"{r['name']} (post-hoc)", r["vs_plain"]) for r in t["post_hoc"]]
    fig, ax = plt.subplots(figsize=(7.5, 0.4 * len(items) + 1.2))
    for i, (name, d) in enumerate(items):
        lo, hi = (100 * v for v in d["accuracy_ci"])
        ax.plot([lo, hi], [i, i], color="C0")
        ax.plot(100 * d["accuracy"], i, "o", color="C0")
    ax.axvline(0, color="k", lw=0.8)
    ax.set(yticks=range(len(items)), yticklabels=[n for n, _ in items],
           xlabel="validation accuracy difference (points, 95 % interval)")
    ax.invert_yaxis()
    fig.tight_layout()
    return fig


def levers_summary(t: dict) -> str:
    """Sentences computed from the table: each lever under its word, the post-hoc levers,
    the goals."""
    by_word: dict[str, list[str]] = {}
    for r in t["levers"]:
        if "vs_baseline" in r:
            by_word.setdefault(r["vs_baseline"]["verdict"], []).append(r["name"])
    out = []
    single = [r for r in t["levers"] if "vs_baseline" in r and len(r["vs_baseline"]["seeds"]) == 1]
    if single:
        against = single[0]["vs_baseline"]["against"]
        base = single[0]["vs_baseline"]["baseline_accuracy"]
        out.append(f"{len(single)} lever(s) ran with one seed. Each is compared with the mean "
                   f"of the {t['baseline']} runs of seeds {', '.join(map(str, against))} "
                   f"(validation accuracy {base:.3f}), and its interval borrows their spread "
                   "between seeds; one seed gets no word about direction.")
    out.append("On accuracy against " + t["baseline"] + ": " + "; ".join(
        f"{w}: {', '.join(names)}" for w, names in by_word.items()) + ".")
    confounded = [r for r in t["levers"] if r.get("vs_baseline", {}).get("verdict")
                  == "confounded"]
    for r in confounded:
        out.append(f"{r['name']} was trained unlike the {t['baseline']} runs in more than the "
                   f"lever: {r['vs_baseline']['reason']}.")
    for r in t["post_hoc"]:
        d = r["vs_plain"]
        out.append(f"{r['name']} on {t['target']}: {100 * d['accuracy']:+.1f} points "
                   f"[{100 * d['accuracy_ci'][0]:+.1f}, {100 * d['accuracy_ci'][1]:+.1f}] "
                   f"({d['verdict']}), QWK {d['qwk']:+.3f}, MAE {d['mae']:+.3f}.")
    if t["best"]:
        goals = t["best"]["goals"]
        met = [k for k, g in goals.items() if g["met"]]
        missed = [f"{k} {g['value']:.3f} < {g['goal']:.2f}" for k, g in goals.items()
                  if not g["met"]]
        out.append(f"Goals of a model trained without ImageNet ({t['best']['model']}): met "
                   f"{', '.join(met) or 'none'}; not met: {'; '.join(missed) or 'none'}.")
    return " ".join(out)


def calibration_table(reports: dict[str, dict]) -> pd.DataFrame:
    """ECE and NLL before and after cross-fitted temperature scaling, per model."""
    rows = []
    for name, c in reports.items():
        rows.append({"model": name, "knees": c["n"], "ECE": f"{c['before']['ece']:.3f}",
                     "ECE, temperature-scaled": f"{c['after']['ece']:.3f}",
                     "NLL": f"{c['before']['nll']:.3f}",
                     "NLL, temperature-scaled": f"{c['after']['nll']:.3f}",
                     "fold temperatures": ", ".join(f"{v:.2f}" for v in c["fold_temperatures"]),
                     "temperature (all knees)": f"{c['temperature_all']:.2f}"})
    return pd.DataFrame(rows).set_index("model")


def reliability_figure(reports: dict[str, dict]):
    """Reliability diagrams: accuracy against mean confidence per bin, before and after
    temperature scaling (marker area = knees in the bin)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(reports), figsize=(3.8 * len(reports), 3.6), squeeze=False)
    for ax, (name, c) in zip(axes[0], reports.items()):
        for key, label, colour in (("before", "as trained", "C3"),
                                   ("after", "temperature-scaled", "C0")):
            bins = [b for b in c[key]["bins"] if b["n"]]
            ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "-o",
                    color=colour, label=f"{label} (ECE {c[key]['ece']:.3f})",
                    markersize=3)
            ax.scatter([b["confidence"] for b in bins], [b["accuracy"] for b in bins],
                       s=[max(4.0, 400 * b["n"] / c["n"]) for b in bins], color=colour,
                       alpha=0.3)
        ax.plot([0, 1], [0, 1], color="k", lw=0.8, ls="--")
        ax.set(title=name, xlabel="confidence (top grade's probability)", ylabel="accuracy",
               xlim=(0, 1), ylim=(0, 1))
        ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    return fig
