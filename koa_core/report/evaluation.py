"""Evaluation (paper §3, Tables 3-4 and 7, Figs. 5-6): the chapter's two models and where
their figures come from (decided once, :func:`chapter_models`), fusion gates,
classification reports beside the paper's, confusion matrices, KL4 recall, bootstrap
intervals, published results.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from koa_core.data.index import discover
from koa_core.experiments.records import run_name, split_run_name
from koa_core.infer.evaluate import evaluate_checkpoint
from koa_core.metrics.classification import majority_rate
from koa_core.paper import TABLE3, TABLE4, TABLE7
from koa_core.report import training
from koa_core.report.paper import KL, PUBLISHED
from koa_core.report.predictions import predict_split
from koa_core.report.published import (
    load_records,
    record_metrics,
    records_note,
    selected_record_name,
)


@dataclass(frozen=True)
class ChapterModels:
    """The evaluation chapter's proposed model and raw-only baseline, evaluated once: from
    their committed records (published book, validation split) or here (test split)."""

    proposed: str | Path  # a record's name, or a checkpoint
    raw_only: str | Path
    split: str
    split_label: str
    m: dict  # the proposed model's metrics
    m_raw: dict
    majority: float  # the accuracy of always answering the most frequent grade
    notes: tuple[str, ...]  # where the figures come from (Markdown; none for a run made here)
    probs: np.ndarray  # the proposed model's per-knee probabilities, grades and patients
    grades: np.ndarray
    patients: list


def chapter_models(records_dir: str | Path, checkpoint: str | Path, runs_dir: str | Path,
                   profiles: Sequence[str], sets: Sequence[str], data_root: str | Path,
                   n_boot: int = 1000) -> ChapterModels:
    """Decide once where the chapter's figures come from: the records under ``records_dir``
    (the selected run and the raw-only run of its seed) when it is set, else the proposed
    checkpoint and a raw-only run trained or reused here, evaluated on the test split."""
    if records_dir:
        records = load_records(records_dir)
        proposed = selected_record_name(records_dir)
        raw_only = run_name("raw", split_run_name(proposed)[1])  # the raw run of its seed
        pp = records[proposed]["predictions"]
        return ChapterModels(
            proposed, raw_only, "val", "validation (stands in for the held-out test split)",
            record_metrics(records[proposed], n_boot=n_boot),
            record_metrics(records[raw_only], n_boot=n_boot), majority_rate(pp["grade"]),
            (records_note({k: records[k] for k in (proposed, raw_only)}),),
            np.asarray(pp["probs"]), np.asarray(pp["grade"]), list(pp["patient"]))
    proposed = training.proposed_checkpoint(checkpoint, runs_dir, profiles, sets, data_root)
    raw_run = training.train_or_reuse(Path(runs_dir) / "ablation-raw",
                                      [*profiles, "ablation-raw"], sets, data_root)
    raw_only = raw_run / "best.safetensors"
    pred = predict_split(proposed, data_root, "test")
    return ChapterModels(
        proposed, raw_only, "test", "test",
        evaluate_checkpoint(proposed, data_root, "test", n_boot=n_boot),
        evaluate_checkpoint(raw_only, data_root, "test", n_boot=n_boot),
        majority_rate([r.grade for r in discover(data_root).split("test")]), (),
        pred[[f"p{g}" for g in range(5)]].to_numpy(), pred["grade"].to_numpy(),
        pred["patient"].tolist())


def gate_table(pred: pd.DataFrame) -> pd.DataFrame:
    """Mean, sd, min and max of the fusion weight w_raw per true grade (w_clahe = 1 - w_raw)."""
    t = pred.groupby("grade")["gate_raw"].agg(["count", "mean", "std", "min", "max"])
    t.index = [KL[g] for g in t.index]
    return t.rename(columns={"mean": "mean w_raw", "std": "sd"})


def gate_figure(pred: pd.DataFrame, seed: int = 0):
    """Distribution of the fusion weight w_raw per true grade (box plot plus points)."""
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    groups = [(g, pred.gate_raw[pred.grade == g].to_numpy()) for g in range(5)]
    groups = [(g, v) for g, v in groups if len(v)]
    ax.boxplot([v for _, v in groups], positions=[g for g, _ in groups], widths=0.5,
               showfliers=False)
    for g, v in groups:
        ax.scatter(g + rng.uniform(-0.15, 0.15, len(v)), v, s=9, alpha=0.6)
    ax.axhline(0.5, color="gray", lw=0.8, ls=":")
    ax.set(xticks=range(5), xticklabels=KL, xlim=(-0.6, 4.6), xlabel="true grade",
           ylabel="w_raw (w_clahe = 1 - w_raw)", title="Fusion gate on the validation split")
    fig.tight_layout()
    return fig


def _report_frame(per_class, accuracy, n, macro, weighted) -> pd.DataFrame:
    rows = {KL[g]: list(per_class[g]) for g in range(5)}
    rows["accuracy"] = [np.nan, np.nan, accuracy, n]
    rows["macro avg"] = [*macro, n]
    rows["weighted avg"] = [*weighted, n]
    df = pd.DataFrame(rows, index=["precision", "recall", "f1-score", "support"]).T.round(4)
    df = df.astype({"support": int}).astype(object)
    return df.where(df.notna(), "")  # the accuracy row has no precision or recall


def report_table(metrics: dict) -> pd.DataFrame:
    """The layout of the paper's Tables 3-4, from the dict of
    :func:`~koa_core.metrics.classification.classification_metrics`."""
    pc = metrics["per_class"]
    per = [(pc[str(g)]["precision"], pc[str(g)]["recall"], pc[str(g)]["f1"],
            pc[str(g)]["support"]) for g in range(5)]
    avg = [tuple(metrics[k][x] for x in ("precision", "recall", "f1"))
           for k in ("macro_avg", "weighted_avg")]
    return _report_frame(per, metrics["accuracy"], metrics["n"], *avg)


def paper_report_table(table: int) -> pd.DataFrame:
    """The paper's Table 3 (raw-only) or Table 4 (proposed), as printed."""
    t = {3: TABLE3, 4: TABLE4}[table]
    return _report_frame(t["per_class"], *t["accuracy"], t["macro"], t["weighted"])


def paper_correct_counts(table: int) -> pd.DataFrame:
    """The diagonal of the paper's confusion matrix (Fig. 5 for table 3, Fig. 6 for 4),
    recovered as recall x support from the table: correctly graded images per grade."""
    t = {3: TABLE3, 4: TABLE4}[table]
    rows = [(round(r * n), n, r) for _, r, _, n in t["per_class"]]
    return pd.DataFrame(rows, index=KL, columns=["correct", "support", "recall"])


def confusion_figure(matrices: dict[str, Sequence[Sequence[int]]]):
    """Seaborn heat maps of confusion matrices (rows true grade), counts annotated and
    colour by row share (recall), side by side (like Figs. 5-6)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, axes = plt.subplots(1, len(matrices), figsize=(4.4 * len(matrices), 3.9),
                             squeeze=False)
    for ax, (title, cm) in zip(axes[0], matrices.items()):
        cm = np.asarray(cm)
        share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        sns.heatmap(share, annot=cm, fmt="d", cmap="Blues", vmin=0, vmax=1, cbar=False,
                    xticklabels=KL, yticklabels=KL, ax=ax)
        ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.tight_layout()
    return fig


def kl4_table(metrics: dict[str, dict]) -> pd.DataFrame:
    """KL4 recall, severe knees found and their number, per model, beside Tables 4 and 3."""
    cols = {name: [round(m["per_class"]["4"]["recall"], 4), m["confusion_matrix"][4][4],
                   m["per_class"]["4"]["support"]] for name, m in metrics.items()}
    for n, t in ((4, TABLE4), (3, TABLE3)):
        _, recall, _, support = t["per_class"][4]
        cols[f"paper (Table {n})"] = [recall, round(recall * support), support]
    return pd.DataFrame(cols, index=["KL4 recall", "KL4 found", "KL4 knees graded"], dtype=object)


def ci_table(metrics: dict) -> pd.DataFrame:
    """Point estimates with their bootstrap intervals (accuracy, macro F1, QWK), and MAE."""
    ci = metrics.get("ci") or {}
    rows = [(k, metrics[k], *(ci.get(k) or (np.nan, np.nan)))
            for k in ("accuracy", "macro_f1", "qwk")]
    rows.append(("mae (grades)", metrics["mae"], np.nan, np.nan))
    level = f"{100 * ci['level']:.0f}%" if ci else "no"
    df = pd.DataFrame(rows, columns=["metric", "value", f"{level} CI low", f"{level} CI high"]
                      ).set_index("metric").round(4).astype(object)
    return df.where(df.notna(), "")  # no interval for MAE (or without bootstrap)


def comparison_table(ours: dict | None = None, label: str = "this book") -> pd.DataFrame:
    """Table 7 as printed, the published results on the same split (with caveats) and,
    when given, our metrics under ``label``."""
    rows = [("paper, Table 7", m, a, f, "", "as printed in the paper")
            for m, a, f in TABLE7]
    rows += [(w, m, a, np.nan, o, c) for w, m, a, o, c in PUBLISHED]
    if ours is not None:
        rows.append((label, "dual-stream ResNet-18 + cross-attention", 100 * ours["accuracy"],
                     ours["macro_f1"], f"QWK {ours['qwk']:.3f}, MAE {ours['mae']:.3f}",
                     ours.get("note", "")))
    df = pd.DataFrame(rows, columns=["source", "model", "accuracy %", "F1", "other", "caveat"])
    df[["accuracy %", "F1"]] = df[["accuracy %", "F1"]].round(2)
    return df.astype(object).where(df.notna(), "")  # blank, not NaN, where none is published
