"""The landing page, answer first: do the paper's claims hold on real knees (§3)?

:func:`scorecard_markdown` writes what the landing page includes, computed from the
records at every build: three summary lines, a compute box (GPU, seconds per run, epochs
trained, how the epoch was chosen), one summary figure (the paper's figure against ours
with seed-aware intervals and a dot per seed), downloads, then the scorecard itself
(:mod:`koa_core.experiments.scorecard`): headline values, Table 5's steps with an
accuracy and a macro-F1 verdict, per-grade rows of Tables 3-4, the text's claims, the
CLAHE clip study on the sample, and the verdict rules.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from koa_core.data.index import discover
from koa_core.experiments.ablation import load_groups
from koa_core.experiments.intervals import METHOD
from koa_core.experiments.scorecard import claim_rows
from koa_core.experiments.verdicts import NOT_TESTABLE, RULES, TOLERANCE
from koa_core.report.clahe import clahe_table
from koa_core.report.data import sample_images
from koa_core.report.published import load_records, records_note
from koa_core.report.training import history_frame

__all__ = ["compute_facts", "downloads", "scorecard_markdown", "scorecard_table",
           "summary_figure", "summary_lines"]

_ORDER = ["clahe", "raw", "dual-noattn", "dual-gate", "proposed"]


def _unit(claim: str) -> int:
    return 2 if "%" in claim or "points" in claim else 3


def _fmt(v, claim: str) -> str:
    return "-" if v is None else f"{v:.{_unit(claim)}f}"


def _ours(r: dict) -> str:
    c = r["claim"]
    return f"{_fmt(r['ours'], c)} [{_fmt(r['ci_low'], c)}, {_fmt(r['ci_high'], c)}]"


def _seeds(values: list[float], claim: str) -> str:
    return " · ".join(_fmt(v, claim) for v in values)


def _paper(r: dict) -> str:
    if r["paper"] is None:
        return "-"
    err = r.get("paper_err")
    return _fmt(r["paper"], r["claim"]) + (f" ± {_fmt(err, r['claim'])}" if err else "")


def scorecard_table(records_dir: str | Path, n_boot: int = 2000,
                    sections: tuple = ("headline",)) -> pd.DataFrame:
    """The value claims of ``sections`` against the records, one row each."""
    groups, meta = load_groups(records_dir)
    rows = claim_rows(groups, n_boot=n_boot, meta=meta, sections=sections)
    return _value_frame([r for r in rows if r["kind"] == "value"])


def _value_frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([{"claim": r["claim"], "paper (± its 95 % sampling error)": _paper(r),
                          "ours [95 % CI]": _ours(r), "per seed": _seeds(r["per_seed"],
                                                                         r["claim"]),
                          "verdict": r["verdict"] + (f" ({r['handicap']})" if r["verdict"]
                                                     == "not comparable" else "")}
                         for r in rows])


def _steps_frame(rows: list[dict]) -> pd.DataFrame:
    out = []
    for r in rows:
        f1 = r["macro_f1_ci"]
        out.append({"step": r["claim"].rsplit(" (", 1)[0] + f" ({' − '.join(r['groups'])})",
                    "paper (points)": "-" if r["paper"] is None else f"+{r['paper']:.2f}",
                    "accuracy points [95 % CI]; per seed": f"{_ours(r)}; "
                    + _seeds(r["per_seed"], "points"),
                    "verdict (accuracy)": r["verdict"],
                    "macro F1 [95 % CI]; per seed": f"{r['macro_f1']:+.3f} [{f1[0]:+.3f}, "
                    f"{f1[1]:+.3f}]; " + _seeds(r["macro_f1_per_seed"], ""),
                    "verdict (macro F1)": r["verdict_macro_f1"],
                    "paper's size inside ours": ("-" if r["paper_inside"] is None else
                                                 "yes" if r["paper_inside"] else "no")})
    return pd.DataFrame(out)


def _grade_frame(rows: list[dict], group: str) -> pd.DataFrame:
    names = {"recall": "recall", "precision": "precision", "f1": "F1"}
    picked = [r for r in rows if r.get("figure", "").partition(":")[2]
              and r["groups"] == [group]]
    picked.sort(key=lambda r: (r["figure"].split(":")[1],
                               list(names).index(r["figure"].split(":")[0])))
    return pd.DataFrame([{"grade": f"KL{r['figure'].split(':')[1]}",
                          "figure": names[r["figure"].split(":")[0]],
                          "paper (± its 95 % sampling error)": _paper(r),
                          "ours [95 % CI]": _ours(r),
                          "per seed": _seeds(r["per_seed"], r["claim"]),
                          "verdict": r["verdict"]} for r in picked])


def _text_frame(rows: list[dict], clip: dict | None) -> pd.DataFrame:
    out = [{"claim": r["claim"], "paper": _fmt(r["paper"], r["claim"]),
            "ours [95 % CI]": _ours(r), "per seed": _seeds(r["per_seed"], r["claim"]),
            "verdict": r["verdict"]} for r in rows]
    if clip:
        out.append(clip)
    return pd.DataFrame(out)


def _clip_row(sample_root: str | Path | None) -> dict | None:
    if not sample_root or not Path(sample_root).exists():
        return None
    index = discover(sample_root)
    split = next(s for s in ("val", "train", "test") if index.split(s))
    images, _ = sample_images(index, n=len(index.split(split)), split=split, seed=0)
    t = clahe_table(images).drop(index="raw")
    best = str(t["edge/noise"].idxmax())
    return {"claim": f"CLAHE clip limit 2.0 balances joint contrast against noise (§2.2): "
                     f"highest joint-edge gain / flat-noise gain among clip 1, 2, 3, on "
                     f"{len(images)} sample knees", "paper": "2.0",
            "ours [95 % CI]": f"best at {best}", "per seed": "edge/noise "
            + ", ".join(f"{c}: {v:.2f}" for c, v in t["edge/noise"].items()),
            "verdict": "reproduced" if best == "2" else "not reproduced"}


def compute_facts(records: dict[str, dict]) -> dict:
    """What the runs behind the scorecard cost (``records``: :func:`load_records`):
    hardware, seconds per run, epochs run, selected epochs, the learning rate at the
    selected epoch as a share of its peak, the patience of early stopping and the
    initialisation."""
    recs = list(records.values())
    wall = np.array([r["provenance"]["wall_s"] for r in recs], float)
    run = np.array([len(r["history"]) for r in recs])
    sel = np.array([r["selected"]["epoch"] for r in recs])
    lr_share = []
    for r in recs:  # records without a learning-rate column leave this out
        h = history_frame(r["history"])
        if "lr" in h and len(h) >= r["selected"]["epoch"]:
            lr = h["lr"].to_numpy(float)
            lr_share.append(lr[r["selected"]["epoch"] - 1] / lr.max())
    train = [r["config"].get("train") or {} for r in recs]
    return {"runs": len(recs), "hardware": sorted({r["provenance"]["machine"]["hardware"]
                                                   for r in recs}),
            "wall_s": wall, "epochs_run": run, "selected": sel,
            "lr_share": np.array(lr_share), "gpu_s": float(wall.sum()),
            "epochs_planned": sorted({t.get("epochs") for t in train}),
            "patience": sorted({t.get("patience") for t in train}),
            "batch": sorted({t.get("batch_size") for t in train}),
            "lr": sorted({t.get("lr") for t in train}),
            "pretrained": sorted({str((r["config"].get("model") or {}).get("pretrained"))
                                  for r in recs})}


def _range(a: np.ndarray, fmt: str = "{:.0f}") -> str:
    return f"median {fmt.format(np.median(a))} ({fmt.format(a.min())}-{fmt.format(a.max())})"


def _compute_box(f: dict) -> list[str]:
    start = ("from scratch (no ImageNet weights)" if f["pretrained"] == ["none"]
             else "from " + ", ".join(f["pretrained"]))
    return [":::{admonition} Compute behind these verdicts", ":class: note", "",
            f"- **Runs:** {f['runs']} trainings on {'; '.join(f['hardware'])}, "
            f"{f['gpu_s'] / 60:.1f} GPU minutes in all; each {_range(f['wall_s'])} s.",
            f"- **Epochs:** planned {', '.join(map(str, f['epochs_planned']))}, run "
            f"{_range(f['epochs_run'])}: early stopping on validation macro F1 with "
            f"patience {', '.join(map(str, f['patience']))}.",
            f"- **Epoch chosen:** the best validation macro F1, epoch "
            f"{_range(f['selected'])}" + (f", where the learning rate was still "
                                          f"{_range(100 * f['lr_share'])} % of its peak."
                                          if len(f["lr_share"]) else "."),
            f"- **Setup:** batch {', '.join(map(str, f['batch']))}, peak learning rate "
            f"{', '.join(map(str, f['lr']))}, {start}.",
            f"- So *not reproduced* below means: not reproduced with about "
            f"{np.median(f['wall_s']):.0f} s of training {start.split(' (')[0]}; "
            f"training to convergence is still to be done.", ":::", ""]


def summary_lines(rows: list[dict]) -> list[str]:
    """Three computed sentences: the headline accuracy, Table 5's steps, the largest gap
    and what exceeds the paper."""
    out = []
    acc = next((r for r in rows if r["claim"].startswith("accuracy of the proposed")), None)
    if acc:
        why = f" ({acc['handicap']})" if acc["verdict"] == "not comparable" else ""
        out.append(f"**Headline accuracy:** {_ours(acc)} % on validation knees (seeds "
                   f"{_seeds(acc['per_seed'], acc['claim'])}) against the paper's "
                   f"{acc['paper']:.2f} % on its test knees: *{acc['verdict']}*{why}.")
    steps = [r for r in rows if r["kind"] == "difference" and r["section"] == "table 5"]
    if steps:
        def count(key):
            words = pd.Series([r[key] for r in steps]).value_counts()
            return ", ".join(f"{n} {w}" for w, n in words.items())
        out.append(f"**Table 5:** of the paper's {len(steps)} claimed steps, on accuracy "
                   f"{count('verdict')}; on macro F1 {count('verdict_macro_f1')}.")
    values = [r for r in rows if r["kind"] == "value" and r["paper"]]
    if values:
        worst = min(values, key=lambda r: r["gap"] / (100 if "%" in r["claim"] else 1))
        over = [r["claim"].replace(" of the proposed model", "") for r in values
                if r["verdict"] == "exceeds the paper" and r["groups"] == ["proposed"]]
        out.append(f"**Largest gap:** {worst['claim']}, {_fmt(worst['ours'], worst['claim'])}"
                   f" against the paper's {_fmt(worst['paper'], worst['claim'])}. "
                   + (f"**Exceeds the paper:** {', '.join(over)}." if over else
                      "Nothing of the proposed model exceeds the paper."))
    return out


def summary_figure(rows: list[dict]):
    """Paper against ours: accuracies (left, %) and the proposed model's F1 and recall
    figures (right), each of ours with its seed-aware interval and a dot per seed, each
    of the paper's with its sampling error."""
    import matplotlib.pyplot as plt

    acc = [r for r in rows if r["kind"] == "value" and r.get("figure") == "accuracy"]
    frac = [r for r in rows if r["kind"] == "value" and r["groups"] == ["proposed"]
            and r["claim"] in {"macro F1 of the proposed model",
                               "weighted F1 of the proposed model",
                               "KL4 recall of the proposed model",
                               "KL1 F1 of the proposed model", "KL1 recall of the proposed "
                               "model"}]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), width_ratios=[1, 1])
    for ax, part, unit in ((axes[0], acc, "accuracy (%)"), (axes[1], frac, "value")):
        for i, r in enumerate(part):
            ax.errorbar(r["paper"], i - 0.15, xerr=r.get("paper_err") or 0, fmt="s",
                        color="tab:orange", capsize=3, label="paper (test)" if i == 0 else None)
            ax.errorbar(r["ours"], i + 0.15, xerr=[[r["ours"] - r["ci_low"]],
                                                   [r["ci_high"] - r["ours"]]],
                        fmt="o", color="tab:blue", capsize=3,
                        label="ours (validation), 95 % CI" if i == 0 else None)
            ax.scatter(r["per_seed"], [i + 0.15] * len(r["per_seed"]), s=14, color="k",
                       zorder=3, label="ours, each seed" if i == 0 else None)
        ax.set_yticks(range(len(part)))
        ax.set_yticklabels([_short(r["claim"]) for r in part])
        ax.invert_yaxis()
        ax.set_xlabel(unit)
        ax.grid(axis="x", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return fig


def _short(claim: str) -> str:
    return (claim.replace("accuracy of the proposed model (%)", "proposed")
            .replace(" of the proposed model", " (proposed)").replace(" accuracy (%)", "")
            .replace("Table 5: ", "")
            .replace(", no attention,", ", no attention"))


def _write_if_changed(path: Path, data: bytes) -> None:
    """Write ``data`` unless the file holds it already: an unchanged rebuild leaves the
    page's assets (and so the page) as they were."""
    if not path.exists() or path.read_bytes() != data:
        path.write_bytes(data)


def downloads(root: Path, records_dir: Path, out: Path, checkpoint: str | None) -> list[str]:
    """Markdown links to what a reader can take away: the shipped checkpoint and its
    sidecar, every record, every record's validation predictions (zips written to
    ``out`` with fixed timestamps, so an unchanged build writes the same bytes)."""
    out.mkdir(parents=True, exist_ok=True)
    results = Path(records_dir).parent
    files = sorted(p for p in results.rglob("*") if p.is_file()
                   and not p.resolve().is_relative_to(out.resolve()))
    preds = [p for p in files if p.name == "val_predictions.csv"]
    for name, members in (("koa-records.zip", files), ("koa-predictions.zip", preds)):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            for p in members:
                info = zipfile.ZipInfo(str(p.relative_to(results.parent)), (2020, 1, 1, 0, 0, 0))
                z.writestr(info, p.read_bytes(), zipfile.ZIP_DEFLATED)
        _write_if_changed(out / name, buf.getvalue())
    def rel(p):
        return Path("..") / Path(p).resolve().relative_to(root)

    links = [f"{{download}}`every record (config, history, selection, predictions) "
             f"<{rel(out / 'koa-records.zip')}>`",
             f"{{download}}`the validation predictions of every run (CSV) "
             f"<{rel(out / 'koa-predictions.zip')}>`"]
    if checkpoint and Path(checkpoint).exists():
        ck = Path(checkpoint).resolve()
        links = [f"{{download}}`the shipped checkpoint <{rel(ck)}>` (safetensors) and "
                 f"{{download}}`its sidecar <{rel(ck.with_suffix('.json'))}>`"] + links
    return ["**Downloads:** " + "; ".join(links) + ".", ""]


def scorecard_markdown(records_dir: str | Path, shipped_eval: str | Path | None = None,
                       profile: str = "", n_boot: int = 2000,
                       sample_root: str | Path | None = None,
                       assets: Path | None = None, checkpoint: str | None = None) -> str:
    """What the landing page includes (Markdown), computed from the records. With
    ``assets`` (a folder beside the page), the summary figure and the downloads are
    written there and linked."""
    records = load_records(records_dir) if Path(records_dir).exists() else {}
    if not records:
        return "\n".join(["## Scorecard: the paper's claims on real knees", "",
                          records_note({}), ""])
    groups, meta = load_groups(records_dir)
    rows = claim_rows(groups, n_boot=n_boot, meta=meta)
    lines = ["## The answer", ""] + [f"- {s}" for s in summary_lines(rows)] + [""]
    lines += _compute_box(compute_facts(records))
    if assets is not None:
        import matplotlib.pyplot as plt

        assets.mkdir(parents=True, exist_ok=True)
        fig = summary_figure(rows)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
        plt.close(fig)
        _write_if_changed(assets / "summary.png", buf.getvalue())
        lines += [f"![The paper's figures against ours: each of ours with its seed-aware "
                  f"95 % interval and a dot per seed]({assets.name}/summary.png)", "",
                  "*The paper's figures (orange, test split, with their binomial 95 % "
                  "sampling error) against ours (blue, validation split, seed-aware 95 % "
                  "interval; black dots: each seed).*", ""]
        root = assets.resolve().parent.parent
        lines += downloads(root, Path(records_dir).resolve(), assets.resolve(), checkpoint)
    lines += _scorecard_sections(rows, shipped_eval, sample_root)
    lines += [records_note(records), ""]
    if profile:
        lines += [f"*Computed when this book was built (profile `{profile}`).*", ""]
    return "\n".join(lines)


def _scorecard_sections(rows: list[dict], shipped_eval, sample_root) -> list[str]:
    heads = [r for r in rows if r["section"] == "headline"]
    steps = [r for r in rows if r["section"] == "table 5"]
    text = [r for r in rows if r["section"] == "text"]
    lines = ["## Scorecard: the paper's claims on real knees", "",
             "Each claim beside our value on the 826 validation knees (the paper's figures are "
             "on its test split; ours never read the test split), our per-seed values, a "
             f"seed-aware 95 % interval ({METHOD}) and a verdict by the rules below.", "",
             "### Headline figures (abstract, Tables 3-5)", "",
             _value_frame(heads).to_markdown(index=False), "",
             "### Table 5, step by step", "",
             "Seed-paired differences: seed s of one configuration against seed s of the "
             "other, on the same knees.", "", _steps_frame(steps).to_markdown(index=False), "",
             "### Per grade (Tables 3 and 4)", "", "The proposed model (Table 4):", "",
             _grade_frame(rows, "proposed").to_markdown(index=False), "",
             "The raw-only baseline (Table 3):", "",
             _grade_frame(rows, "raw").to_markdown(index=False), "",
             "### Claims of the text", "",
             _text_frame(text, _clip_row(sample_root)).to_markdown(index=False), ""]
    off = sum(r["verdict"] == NOT_TESTABLE for r in rows)
    if off:
        lines += [f"{off} rows are *{NOT_TESTABLE}*: their records were made on a copy of "
                  "the data whose every crop had been through CLAHE (clip 5.0, 8 x 8) before "
                  "the paper's pipeline, so the model's \"raw\" stream saw an enhanced image "
                  "and its CLAHE stream a second pass. Raw against CLAHE and the gate's "
                  "leaning need records trained on the original crops; their numbers are "
                  "shown, not judged.", ""]
    lines += ["### How the verdicts are read", "",
              pd.DataFrame(RULES, columns=["kind of claim", "rule"]).to_markdown(index=False),
              "", f"Tolerance: ±{TOLERANCE['points']:g} points or "
              f"±{TOLERANCE['fraction']:g} (ours; the paper states none). With three seeds the "
              "interval is at least as wide as the seeds' spread; where a row has two, "
              "it says so in its per-seed column.", ""]
    lines += _shipped_lines(shipped_eval)
    return lines


def _shipped_lines(shipped_eval) -> list[str]:
    if not shipped_eval or not Path(shipped_eval).exists():
        return []
    m = json.loads(Path(shipped_eval).read_text())
    acc = (m.get("ci") or {}).get("accuracy") or [float("nan")] * 2
    return [f"The shipped checkpoint (one of the proposed runs, chosen by validation macro F1 "
            f"with every grade's recall at least 0.3), re-evaluated on "
            f"{m['machine']['hardware']} ({m.get('precision', '')}) on the original "
            f"images{_as_trained(m.get('input_transform'))}: accuracy "
            f"{100 * m['accuracy']:.2f} % [{100 * acc[0]:.2f}, {100 * acc[1]:.2f}] (knees "
            f"resampled: one model), macro F1 {m['macro_f1']:.3f}, KL4 recall "
            f"{m['per_class']['4']['recall']:.3f} on the {m['n']} validation knees.", ""]


def _as_trained(transform: str | None) -> str:
    """', through its input transform ... as trained' for a checkpoint that has one."""
    if not transform or transform == "none":
        return ""
    return (f", each through the checkpoint's input transform ({transform}: its training "
            "crops were enhanced so)")
