"""The published book's helpers: chapters that read committed result records (§3).

Expensive runs (the GPU campaign of :mod:`koa_core.experiments.campaign`) are made once and kept as
records (:mod:`koa_core.experiments.records`); these helpers turn records into the same tables and
figures the live chapters make, and say where each number comes from (machine, commit,
command, data encoding). The landing page's scorecard is :mod:`koa_core.book.landing`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from koa_core.experiments.ablation import ROWS, ablation_table, in_row_order
from koa_core.experiments.campaign import select_run
from koa_core.experiments.records import find_records, read_record, record_copy
from koa_core.metrics.classification import classification_metrics
from koa_core.paper import TABLE5

__all__ = ["data_caveats", "history_frame", "load_records", "provenance_table",
           "shared_provenance",
           "record_frame", "record_history", "record_metrics", "record_summary",
           "records_note", "selected_record_name", "selection_frame",
           "table5_claims", "table5_figure", "table5_table"]


def load_records(records_dir: str | Path) -> dict[str, dict]:
    """Every complete record under ``records_dir`` by name (an incomplete one is refused)."""
    return {p.name: read_record(p) for p in find_records(records_dir)}


def record_frame(rec: dict) -> pd.DataFrame:
    """A record's validation predictions as
    :func:`~koa_core.report.predictions.predict_split` returns them: path, grade, pred,
    p0..p4, gate_raw (NaN for single-stream models)."""
    p = rec["predictions"]
    df = pd.DataFrame(p["probs"], columns=[f"p{g}" for g in range(5)])
    df.insert(0, "path", p["path"])
    df.insert(1, "grade", p["grade"])
    df.insert(2, "pred", p["pred"])
    df["gate_raw"] = p["gate_raw"] if p["gate_raw"] is not None else np.nan
    return df


def history_frame(rows: list[dict]) -> pd.DataFrame:
    """History rows (a run's or a record's ``history.csv``) as numbers; empty if none."""
    return pd.DataFrame(rows).apply(pd.to_numeric, errors="coerce") if rows else pd.DataFrame()


def record_history(rec: dict) -> pd.DataFrame:
    """A record's ``history.csv`` as numbers (one row per epoch)."""
    return history_frame(rec["history"])


def record_summary(rec: dict) -> pd.DataFrame:
    """The selected epoch, its validation figures and where the run was made."""
    prov, sel = rec["provenance"], rec["selected"]
    m = sel["val_metrics"]
    rows = {"record": rec["name"], "epochs run": len(rec["history"]),
            "selected epoch (best val macro F1)": sel["epoch"],
            "val accuracy": round(m["accuracy"], 4), "val macro F1": round(m["macro_f1"], 4),
            "val QWK": round(m["qwk"], 4), "val knees": m["n"],
            "training time (s)": prov["wall_s"], "training images/s": prov["train_img_s"],
            "hardware": prov["machine"]["hardware"], "data encoding": prov["data"]["encoding"],
            "code commit": prov["commit"][:12], "command": prov["command"]}
    return pd.DataFrame({"value": [str(v) for v in rows.values()]}, index=list(rows))


def _provenance_rows(records: dict[str, dict]) -> pd.DataFrame:
    rows = []
    for name, r in sorted(records.items()):
        p = r["provenance"]
        rows.append({"record": name, "hardware": p["machine"]["hardware"],
                     "torch": p["machine"].get("torch"), "commit": p["commit"][:12],
                     "epochs": len(r["history"]), "selected": r["selected"]["epoch"],
                     "wall s": p["wall_s"], "img/s": p["train_img_s"],
                     "data": p["data"]["encoding"]})
    return pd.DataFrame(rows).set_index("record")


def provenance_table(records: dict[str, dict]) -> pd.DataFrame:
    """One row per record: what differs between records (epochs, selected epoch, wall
    time, images/s, and machine, commit or data where they differ);
    :func:`shared_provenance` states the values every record shares once."""
    df = _provenance_rows(records)
    return df[[c for c in df.columns if df[c].nunique() > 1
               or c in ("epochs", "selected", "wall s", "img/s")]]


def shared_provenance(records: dict[str, dict]) -> str:
    """One Markdown line: the provenance values every record shares."""
    df = _provenance_rows(records)
    same = {c: df[c].iloc[0] for c in df.columns if df[c].nunique() == 1
            and c not in ("epochs", "selected", "wall s", "img/s")}
    return ("Shared by every record: " + "; ".join(f"**{k}** {v}" for k, v in same.items())
            + ".") if same else ""


def data_caveats(records: dict[str, dict]) -> list[str]:
    """The caveats that apply to results computed from these records."""
    enc = sorted({r["provenance"]["data"]["encoding"] for r in records.values()})
    pre = sorted({str((r["config"].get("model") or {}).get("pretrained"))
                  for r in records.values()})
    n = sorted({len(r["predictions"]["grade"]) for r in records.values()})
    phantom = any(e == "synthetic phantom" for e in enc)
    copies = [record_copy(r["provenance"]) for r in records.values()]
    enhanced = sorted({c for c in copies if c not in (None, "original", "phantom")})
    out = []
    if phantom:
        out.append("the data are the synthetic phantom: these figures check the pipeline, they "
                   "are not results on knees")
    if enhanced:
        share = ("these records" if len(enhanced) and all(c in enhanced for c in copies)
                 else "some of these records")
        out.append(f"{share} were made on an enhanced copy of the data (data.copy "
                   + ", ".join(f"`{c}`" for c in enhanced) + "), in which every crop had been "
                   "through CLAHE before the paper's pipeline: their raw stream saw one CLAHE "
                   "pass and their CLAHE stream two (in the paper's pipeline: none and one), "
                   "so the claims about raw against CLAHE and about the gate are "
                   "not testable on them")
    if None in copies and not phantom:
        out.append("some records name no data copy (made before data.copy; "
                   "koa stamp names it)")
    out.append(f"figures are on the validation split ({', '.join(map(str, n))} knees), which "
               "also chose each run's epoch; the test split is held out and was never read")
    if any("lossy" in e for e in enc):
        out.append("data as transferred to the GPU: " + "; ".join(enc))
    if pre == ["none"]:
        out.append("every model was trained from scratch (no ImageNet initialisation)")
    return out


def records_note(records: dict[str, dict]) -> str:
    """One Markdown paragraph: how many records, from which machine and commit."""
    if not records:
        return ("**No result records** were found for this build, so this chapter shows "
                "no real-data result.")
    hw = sorted({r["provenance"]["machine"]["hardware"] for r in records.values()})
    commits = sorted({r["provenance"]["commit"][:12] for r in records.values()})
    cmds = sorted({r["provenance"]["command"].split(" --")[0] for r in records.values()})
    return (f"{len(records)} records, made by `{'`, `'.join(cmds)}` on {', '.join(hw)} "
            f"(code {', '.join(commits)}). Caveats: " + "; ".join(data_caveats(records)) + ".")


def table5_table(records_dir: str | Path) -> tuple[pd.DataFrame, dict]:
    """Table 5 from records: per configuration, mean ± sd over seeds (validation)."""
    t = ablation_table(records_dir)
    names = {"clahe": "Single-stream (CLAHE only)", "raw": "Single-stream (Raw only)",
             "dual-noattn": "Dual-stream, no attention (mean fusion)",
             "dual-gate": "Dual-stream, learned gate, no cross-attention (ours)",
             "proposed": "Proposed (cross-attention + gate)"}

    def pm(s, scale=1.0, d=3):
        return (f"{s['mean'] * scale:.{d}f}" if s["sd"] is None
                else f"{s['mean'] * scale:.{d}f} ± {s['sd'] * scale:.{d}f}")

    rows = []
    for g in in_row_order(t["configurations"]):
        r = t["configurations"][g]
        rows.append({"configuration": names.get(g, g), "seeds": len(r["seeds"]),
                     "val accuracy %": pm(r["accuracy"], 100, 2),
                     "val macro F1": pm(r["macro_f1"]), "val QWK": pm(r["qwk"]),
                     "KL4 recall": pm(r["kl4_recall"]),
                     "paper test accuracy %": (f"{r['paper_test_accuracy']:.2f}"
                                               if r["paper_test_accuracy"] else "-")})
    return pd.DataFrame(rows).set_index("configuration"), t


def table5_claims(t: dict) -> pd.DataFrame:
    """The judged steps of :func:`koa_core.experiments.ablation.ablation_table` as a table:
    per step the accuracy and the macro-F1 claim, each with its seed-aware interval, each
    seed's difference, the verdict and what decided it (the words of the scorecard)."""
    acc = [c for c in t["claims"] if c["metric"] == "accuracy"]
    f1 = {tuple(c["configs"]): c for c in t["claims"] if c["metric"] == "macro_f1"}
    rows = []
    for c in acc:
        m = f1[tuple(c["configs"])]
        lo, hi = c["ci"]
        rows.append({"claim": c["text"].rsplit(" (", 1)[0],
                     "difference": " - ".join(c["configs"]),
                     "paper (points)": "-" if c["paper"] is None else f"+{c['paper']:.2f}",
                     "ours (points) [95 % CI]": f"{c['ours']:+.2f} [{lo:+.2f}, {hi:+.2f}]",
                     "per seed (points)": " · ".join(f"{v:+.2f}" for v in c["per_seed"]),
                     "verdict (accuracy)": c["verdict"] + (f" ({c['reason']})"
                                                           if c["reason"] else ""),
                     "macro F1 [95 % CI]": f"{m['ours']:+.3f} [{m['ci'][0]:+.3f}, "
                                           f"{m['ci'][1]:+.3f}]",
                     "verdict (macro F1)": m["verdict"]})
    return pd.DataFrame(rows).set_index("claim")


def selected_record_name(records_dir: str | Path) -> str:
    """The record the shipped checkpoint came from: ``selection.json`` beside the records
    folder (written by the campaign), else the shipping rule applied to the records."""
    sel = Path(records_dir).parent / "selection.json"
    if sel.exists():
        return json.loads(sel.read_text())["name"]

    return select_run(records_dir)["name"]


def record_metrics(rec: dict, n_boot: int = 1000, seed: int = 0) -> dict:
    """:func:`~koa_core.metrics.classification.classification_metrics`
    of a record's predictions, with
    ``n_boot`` bootstrap resamples (the record's own ``selected.json`` holds 1,000)."""
    p = rec["predictions"]
    m = classification_metrics(p["grade"], p["pred"], n_boot=n_boot, seed=seed)
    if p["gate_raw"] is not None:
        m["gate_raw_mean_by_grade"] = {str(g): float(p["gate_raw"][p["grade"] == g].mean())
                                       for g in range(5) if (p["grade"] == g).any()}
    return m


def table5_figure(t: dict):
    """Validation accuracy per configuration (each seed a dot, the mean a bar) beside the
    paper's Table 5 test accuracy."""
    import matplotlib.pyplot as plt

    names = [g for g in ROWS if g in t["configurations"]]
    fig, ax = plt.subplots(figsize=(7.5, 3.9))
    y = np.arange(len(names))
    means = [100 * t["configurations"][g]["accuracy"]["mean"] for g in names]
    ax.barh(y + 0.2, means, 0.4, label="ours: validation, mean over seeds")
    for i, g in enumerate(names):
        seeds = t["configurations"][g].get("seed_accuracy") or []
        ax.scatter([100 * a for a in seeds], [i + 0.2] * len(seeds), color="k", s=12, zorder=3)
    ax.barh(y - 0.2, [TABLE5.get(g, 0) for g in names], 0.4,
            label="paper: test, Table 5")
    ax.set(yticks=y, yticklabels=names, xlabel="accuracy (%)", xlim=(0, 100))
    ax.invert_yaxis()
    # below the axes: inside, it covered the proposed model's bars
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2, frameon=False)
    fig.tight_layout()
    return fig


def selection_frame(bias: list) -> pd.DataFrame:
    """Per configuration: the epochs chosen and run, and accuracy and macro F1 at the
    chosen epoch, around it and at the last epoch (means over seeds)."""
    by_config = {b.config: b for b in bias}
    rows = []
    for b in (by_config[g] for g in in_row_order(by_config)):
        rows.append({"configuration": b.config,
                     "epoch chosen / run": " · ".join(f"{c}/{r}" for c, r in
                                                      zip(b.chosen_epoch, b.epochs_run)),
                     "chosen on these knees": "yes" if b.chosen_on_val else "no (last)",
                     "accuracy: chosen / around / last": " / ".join(
                         f"{100 * v:.2f}" for v in b.accuracy),
                     "macro F1: chosen / around / last": " / ".join(
                         f"{v:.3f}" for v in b.macro_f1)})
    return pd.DataFrame(rows)
