"""The shipped checkpoint's model card (Mitchell et al. 2019), written at every build from
its sidecar and the committed records: what it is for and not for, what it was trained on,
how it grades on validation knees, how sure it is, what the input check flags, where it
fails, its licence and citation. Every number is read from a file named beside it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from koa_core.experiments.intervals import seed_figure
from koa_core.metrics.conformal import Conformal
from koa_core.paper import KL

__all__ = ["grade_table", "model_card_markdown"]

PAGE = "model_card"  # book/model_card.md: the page `koa predict --help` and the grader name


def _knees(cm: list[list[int]]) -> dict[int, dict]:
    """One run's grades and predictions rebuilt from its confusion matrix (the intervals
    depend on the counts alone)."""
    cm = np.asarray(cm)
    y = np.repeat(np.repeat(np.arange(5), 5), cm.ravel())
    pred = np.repeat(np.tile(np.arange(5), 5), cm.ravel())
    return {1: {"grade": y, "pred": pred}}


def grade_table(cm: list[list[int]]) -> pd.DataFrame:
    """Per grade: precision, recall (Wilson 95 % intervals) and F1 (delete-one-knee
    jackknife), and the knees of each grade."""
    run, rows = _knees(cm), []
    for g in range(5):
        row = {"grade": KL[g], "knees": int(np.asarray(cm)[g].sum())}
        for fig in ("precision", "recall", "f1"):
            e = seed_figure(run, f"{fig}:{g}")
            row[fig if fig != "f1" else "F1"] = f"{e.value:.3f} [{e.ci[0]:.3f}, {e.ci[1]:.3f}]"
        rows.append(row)
    return pd.DataFrame(rows)


def _intended() -> list[str]:
    return ["## Intended use", "",
            "- **For:** research on automatic Kellgren-Lawrence grading of knee radiographs: "
            "reproducing and extending the paper, comparing methods, teaching.",
            "- **Not for:** diagnosis, treatment decisions or any clinical use. It is not a "
            "medical device, was validated on no clinical population, and its grades are "
            "right about as often as the accuracy below says.", ""]


def _training(side: dict) -> list[str]:
    m, t, d = side["config"]["model"], side.get("training") or {}, side.get("data") or {}
    return ["## Model and training", "",
            f"- **Architecture:** {m['streams']} stream, cross-attention "
            f"{'on' if m.get('cross_attention') else 'off'}, {m.get('fusion')} fusion, "
            f"dropout {m.get('dropout')}, auxiliary heads {'on' if m.get('aux_heads') else 'off'}"
            f"; initialisation: {m.get('pretrained')}; weights stored as "
            f"{side.get('weights_dtype', 'float32')}.",
            f"- **Training:** {t.get('epochs_run', '?')} epochs in {t.get('seconds', '?')} s on "
            f"{side.get('hardware', '?')}; the epoch ({side.get('epoch')}) chosen on validation "
            f"{side.get('select_metric')}.",
            f"- **Data:** {d.get('root', '?')}; {sum(d.get('train_counts') or [])} training and "
            f"{sum(d.get('val_counts') or [])} validation knees "
            f"(per grade {', '.join(map(str, d.get('train_counts') or []))} and "
            f"{', '.join(map(str, d.get('val_counts') or []))}).",
            f"- **Input transform:** {d.get('input_transform') or 'none'}.", ""]


def _performance(ev: dict) -> list[str]:
    ci = ev.get("ci") or {}

    def with_ci(k, scale=1.0, d=3):
        lo_hi = ci.get(k)
        return (f"{scale * ev[k]:.{d}f}" + (f" [{scale * lo_hi[0]:.{d}f}, "
                                             f"{scale * lo_hi[1]:.{d}f}]" if lo_hi else ""))

    return ["## How it grades", "",
            f"On the {ev['n']} validation knees (originals, {ev['machine']['hardware']}, "
            f"`results/gpu/shipped-val-cpu.json`): accuracy {with_ci('accuracy', 100, 2)} %, "
            f"macro F1 {with_ci('macro_f1')}, QWK {with_ci('qwk')}, mean absolute error "
            f"{ev['mae']:.3f} grades (95 % intervals over knees, one model).", "",
            grade_table(ev["confusion_matrix"]).to_markdown(index=False), ""]


def _certainty(side: dict) -> list[str]:
    out = ["## How sure it is", ""]
    cal = side.get("calibration")
    if cal:
        out.append(f"- **Calibration:** temperature {cal['temperature']:.3f}, fitted on "
                   f"{cal['knees']} {cal['split']} knees; expected calibration error "
                   f"{cal['ece']['before']:.3f} before, {cal['ece']['after']:.3f} after "
                   f"(cross-fitted on halves of the patients: {cal['cross_fitted']['ece']:.3f}).")
    else:
        out.append("- **Calibration:** none stored; probabilities are the plain softmax.")
    conf = side.get("conformal")
    if conf:
        c = Conformal.from_dict(conf)
        got = conf.get("measured") or {}
        out.append(f"- **Sets of grades with a guarantee:** {c.method} conformal sets "
                   f"{'with one threshold per grade ' if c.class_conditional else ''}at "
                   f"{100 * c.coverage:.0f} %, calibrated on {c.n} {conf.get('split', '')} "
                   "knees" + (f"; on those knees they held the grade for "
                              f"{100 * got['coverage']:.1f} % with {got['mean_set_size']:.2f} "
                              "grades on average" if got else "") + ". The guarantee holds "
                   "for knees like the calibration knees only: a flagged input keeps its flag "
                   "beside its set.")
    else:
        out.append("- **Sets of grades:** no conformal calibration stored; `koa predict` "
                   "shows no set.")
    return out + [""]


def _inputs_and_failures(stats: dict, ev: dict, side_profile: dict | None) -> list[str]:
    ic = stats.get("input_check") or {}
    checked, flags = ic.get("checked") or {}, ic.get("flags") or {}
    rates = [f"{split}: " + ", ".join(f"{k} {v} ({100 * v / checked[split]:.1f} %)"
                                      for k, v in f.items()) + f" of {checked[split]}"
             for split, f in flags.items() if checked.get(split)]
    recall = {g: ev["per_class"][str(g)]["recall"] for g in range(5)}
    low = sorted(recall, key=recall.get)[:2]
    inverted = ((side_profile or {}).get("knee") or {}).get("inverted_in_training")
    return ["## The input check", "",
            f"On the public originals (`results/data-stats.json`, profile: {ic.get('profile')}), "
            "the input check flags " + "; ".join(rates) + ". A flagged image is still "
            "graded.", "",
            "## Known failure modes", "",
            f"- **{KL[low[0]]} and {KL[low[1]]}** are the grades it finds least often: recall "
            f"{recall[low[0]]:.3f} and {recall[low[1]]:.3f} on validation (the table above).",
            "- **Inverted knees** (bone dark) exist in the public crops themselves"
            + (f" ({inverted} of the knees its input profile was fitted on)" if inverted else "")
            + "; the input check flags them `inverted`; their grades were not measured apart.",
            "- **Full radiographs, both knees, photographs:** it was trained on single-knee "
            "joint crops and grades whatever it is given; the input check flags such images "
            "`not-a-knee-crop`.", ""]


def _licence() -> list[str]:
    return ["## Licence and citation", "",
            "The code and the checkpoint: MIT licence. The training images: Chen P., *Knee "
            "osteoarthritis severity grading dataset*, Mendeley Data v1, 2018, "
            "doi:10.17632/56rmx5bjcr.1 (CC BY 4.0). The method: P. T. V. Huong et al., "
            "*Dual-stream ResNet-18 with Cross-Attention for Enhanced Knee Osteoarthritis "
            "Classification from X-ray Images*.", ""]


def model_card_markdown(checkpoint: str | Path, shipped_eval: str | Path,
                        data_stats: str | Path) -> str:
    """The model card page (Markdown) from the checkpoint's sidecar, its CPU re-evaluation
    and the data statistics."""
    side = json.loads(Path(checkpoint).with_suffix(".json").read_text())
    ev = json.loads(Path(shipped_eval).read_text()) if Path(shipped_eval).exists() else None
    stats = json.loads(Path(data_stats).read_text()) if Path(data_stats).exists() else {}
    lines = [f"# Model card: `{Path(checkpoint).name}`", "",
             "The checkpoint `koa predict` and the in-browser grader use by default. Written "
             "when this book was built, from its sidecar "
             f"(`{Path(checkpoint).with_suffix('.json').name}`) and the committed records.", ""]
    measured = ([f"No re-evaluation of the checkpoint was found ({Path(shipped_eval).name}): "
                 "this card has no figures of how it grades.", ""] if ev is None else
                _performance(ev) + _certainty(side)
                + _inputs_and_failures(stats, ev, side.get("input_profile")))
    for part in (_intended(), _training(side), measured, _licence()):
        lines += part
    return "\n".join(lines)
