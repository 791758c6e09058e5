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
from koa_core.experiments.groups import LAST, NEIGHBOURS, load_groups, selection_bias
from koa_core.experiments.intervals import METHOD
from koa_core.experiments.scorecard import Claim, judge_claims
from koa_core.experiments.verdicts import (
    EXCEEDS,
    MIN_SEEDS,
    NOT_REPRODUCED,
    NOT_TESTABLE,
    RULES,
    TOLERANCE,
    tolerance,
)
from koa_core.paper import CLAIMS as PAPER_CLAIMS
from koa_core.paper import KL
from koa_core.report.clahe import clahe_table
from koa_core.report.data import sample_images
from koa_core.report.published import history_frame, load_records, records_note, selection_frame

__all__ = ["compute_facts", "downloads", "scorecard_markdown", "scorecard_table",
           "summary_figure", "summary_lines"]

_CONFIG = {"proposed": "proposed", "raw": "raw-only", "clahe": "CLAHE-only",
           "dual-noattn": "dual, no attention", "dual-gate": "dual, learned gate"}
_METRIC = {"accuracy": "accuracy", "macro_f1": "macro F1", "weighted_f1": "weighted F1",
           "recall": "recall", "precision": "precision", "f1": "F1"}


def _fmt(v: float | None, c: Claim, sign: bool = False) -> str:
    if v is None:
        return "-"
    return f"{v:{'+' if sign else ''}.{2 if c.scale == 100 else 3}f}"


def _ours(c: Claim, sign: bool = False) -> str:
    return f"{_fmt(c.ours, c, sign)} [{_fmt(c.ci[0], c, sign)}, {_fmt(c.ci[1], c, sign)}]"


def _seeds(c: Claim, sign: bool = False) -> str:
    return " · ".join(_fmt(v, c, sign) for v in c.per_seed)


def _paper(c: Claim) -> str:
    if c.paper is None:
        return "-"
    inside = f" [{_fmt(c.paper_ci[0], c)}, {_fmt(c.paper_ci[1], c)}]" if c.paper_ci else ""
    return _fmt(c.paper, c) + inside


def _word(c: Claim) -> str:
    return c.verdict + (f" ({c.reason})" if c.reason else "")


def _gap(c: Claim) -> str:
    if c.gap_ci is None:
        return "-"
    tol = f"; ± {_fmt(c.tolerance, c)}" if c.tolerance else ""
    return (f"{_fmt(c.gap, c, True)} [{_fmt(c.gap_ci[0], c, True)}, "
            f"{_fmt(c.gap_ci[1], c, True)}]{tol}")


def scorecard_table(records_dir: str | Path, sections: tuple = ("headline",)) -> pd.DataFrame:
    """The value claims of ``sections`` against the records, one row each."""
    groups, _ = load_groups(records_dir)
    return _value_frame([c for c in judge_claims(groups, sections) if c.kind == "value"])


def _value_frame(claims: list[Claim]) -> pd.DataFrame:
    return pd.DataFrame([{"claim": c.text, "the paper claims": c.direction,
                          "paper [its 95 % interval]": _paper(c),
                          "ours [95 % CI]": _ours(c), "per seed": _seeds(c),
                          "ours − paper [95 %]; tolerance": _gap(c), "verdict": _word(c)}
                         for c in claims])


def _steps_frame(claims: list[Claim]) -> pd.DataFrame:
    out = []
    acc = [c for c in claims if c.metric == "accuracy"]
    f1 = {c.configs: c for c in claims if c.metric == "macro_f1"}
    for c in acc:
        m = f1[c.configs]
        out.append({"step": f"{c.text.rsplit(' (', 1)[0]} ({' − '.join(c.configs)})",
                    "paper (points)": "-" if c.paper is None else f"+{c.paper:.2f}",
                    "accuracy points [95 % CI]; per seed": f"{_ours(c, True)}; "
                    + _seeds(c, True), "verdict (accuracy)": _word(c),
                    "macro F1 [95 % CI]; per seed": f"{_ours(m, True)}; " + _seeds(m, True),
                    "verdict (macro F1)": m.verdict,
                    "paper's size inside ours": ("-" if c.paper_inside is None else
                                                 "yes" if c.paper_inside else "no")})
    return pd.DataFrame(out)


def _grade_frame(claims: list[Claim], config: str) -> pd.DataFrame:
    order = ("recall", "precision", "f1")
    picked = sorted((c for c in claims if c.grade is not None and c.configs == (config,)),
                    key=lambda c: (c.grade, order.index(c.metric)))
    return pd.DataFrame([{"grade": KL[c.grade], "figure": _METRIC[c.metric],
                          "the paper claims": c.direction,
                          "paper [its 95 % interval]": _paper(c), "ours [95 % CI]": _ours(c),
                          "per seed": _seeds(c), "verdict": _word(c)} for c in picked])


def _text_frame(claims: list[Claim], clip: dict | None) -> pd.DataFrame:
    out = [{"claim": c.text, "paper": _fmt(c.paper, c), "ours [95 % CI]": _ours(c),
            "per seed": _seeds(c), "verdict": _word(c)} for c in claims]
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


def _judged(claims: list[Claim]) -> list[Claim]:
    return [c for c in claims if c.verdict != NOT_TESTABLE]


def summary_lines(claims: list[Claim], bias: list | None = None) -> list[str]:
    """Three computed sentences: the headline accuracy (with the deviations of a shortfall
    and the epoch choice's lift), Table 5's steps, the largest gap and what exceeds the
    paper."""
    out = []
    acc = next((c for c in claims if c.key == "table4/accuracy"), None)
    if acc:
        lift = next((b for b in bias or () if b.config == "proposed" and b.chosen_on_val), None)
        out.append(f"**Headline accuracy:** {_ours(acc)} % on validation knees (seeds "
                   f"{_seeds(acc)}) against the paper's {acc.paper:.2f} % on its test knees: "
                   f"*{acc.verdict}*" + (f" (deviations: {acc.reason})"
                                         if acc.verdict == NOT_REPRODUCED else "") + "."
                   + (f" Optimistic: the epoch was chosen on these knees; the last epoch "
                      f"scores {100 * lift.accuracy[2]:.2f} %, the epochs around the chosen "
                      f"one {100 * lift.accuracy[1]:.2f} %." if lift else ""))
    steps = [c for c in claims if c.kind == "difference"]
    if steps:
        def count(metric):
            words = pd.Series([c.verdict for c in steps if c.metric == metric]).value_counts()
            return ", ".join(f"{n} {w}" for w, n in words.items())
        out.append(f"**Table 5:** of the paper's {len(steps) // 2} claimed steps, on accuracy "
                   f"{count('accuracy')}; on macro F1 {count('macro_f1')}.")
    values = [c for c in _judged(claims) if c.kind == "value"]
    if values:
        worst = min(values, key=lambda c: c.gap / c.scale)
        over = [c.text.replace(" of the proposed model", "") for c in values
                if c.verdict == EXCEEDS and c.configs == ("proposed",)]
        out.append(f"**Largest gap:** {worst.text}, {_fmt(worst.ours, worst)} against the "
                   f"paper's {_fmt(worst.paper, worst)}. "
                   + (f"**Exceeds the paper:** {', '.join(over)}." if over else
                      "Nothing of the proposed model exceeds the paper."))
    return out


_FIGURE_KEYS = ("table4/macro_f1", "table4/weighted_f1", "table4/recall/KL4", "table4/f1/KL1",
                "table4/recall/KL1")


def summary_figure(claims: list[Claim]):
    """Paper against ours: accuracies (left, %) and the proposed model's F1 and recall
    figures (right), each of ours with its seed-aware interval and a dot per seed, each
    of the paper's with its own 95 % interval."""
    import matplotlib.pyplot as plt

    acc = [c for c in claims if c.kind == "value" and c.metric == "accuracy"]
    frac = sorted((c for c in claims if c.key in _FIGURE_KEYS), key=lambda c:
                  _FIGURE_KEYS.index(c.key))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), width_ratios=[1, 1])
    for ax, part, unit in ((axes[0], acc, "accuracy (%)"), (axes[1], frac, "value")):
        for i, c in enumerate(part):
            ax.errorbar(c.paper, i - 0.15, xerr=[[c.paper - c.paper_ci[0]],
                                                 [c.paper_ci[1] - c.paper]],
                        fmt="s", color="tab:orange", capsize=3,
                        label="paper (test)" if i == 0 else None)
            ax.errorbar(c.ours, i + 0.15, xerr=[[c.ours - c.ci[0]], [c.ci[1] - c.ours]],
                        fmt="o", color="tab:blue", capsize=3,
                        label="ours (validation), 95 % CI" if i == 0 else None)
            ax.scatter(c.per_seed, [i + 0.15] * len(c.per_seed), s=14, color="k",
                       zorder=3, label="ours, each seed" if i == 0 else None)
        ax.set_yticks(range(len(part)))
        ax.set_yticklabels([_short(c) for c in part])
        ax.invert_yaxis()
        ax.set_xlabel(unit)
        ax.grid(axis="x", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return fig


def _short(c: Claim) -> str:
    """A claim's label on the summary figure, from its fields."""
    if c.metric == "accuracy":
        return _CONFIG.get(c.configs[0], c.configs[0])
    grade = f" {KL[c.grade]}" if c.grade is not None else ""
    return f"{_METRIC[c.metric]}{grade} ({_CONFIG.get(c.configs[0], c.configs[0])})"


def _selection_lines(bias: list) -> list[str]:
    chosen = [b for b in bias if b.chosen_on_val]
    if not chosen:
        return []
    lift = [b.macro_f1[0] - b.macro_f1[1] for b in chosen]
    return ["### The epoch was chosen on the knees that score it", "",
            "Each run's figures are those of its best validation epoch, chosen on the same "
            "validation knees they are measured on, so they are optimistic. Averaged per "
            "configuration, the chosen epoch's macro F1 beats the mean of the epochs within "
            f"{NEIGHBOURS} of it by {min(lift):.3f} to {max(lift):.3f}; the "
            "last epoch's figures are shown beside it. Records of fixed-length training "
            f"(epoch chosen by `{LAST}`) report their last epoch and carry no such lift.", "",
            selection_frame(bias).to_markdown(index=False), ""]


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
                       profile: str = "", sample_root: str | Path | None = None,
                       assets: Path | None = None, checkpoint: str | None = None) -> str:
    """What the landing page includes (Markdown), computed from the records. With
    ``assets`` (a folder beside the page), the summary figure and the downloads are
    written there and linked."""
    records = load_records(records_dir) if Path(records_dir).exists() else {}
    if not records:
        return "\n".join(["## Scorecard: the paper's claims on real knees", "",
                          records_note({}), ""])
    groups, _ = load_groups(records_dir)
    claims = judge_claims(groups)
    bias = selection_bias(groups)
    lines = ["## The answer", ""] + [f"- {s}" for s in summary_lines(claims, bias)] + [""]
    lines += _compute_box(compute_facts(records))
    if assets is not None:
        import matplotlib.pyplot as plt

        assets.mkdir(parents=True, exist_ok=True)
        fig = summary_figure(claims)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
        plt.close(fig)
        _write_if_changed(assets / "summary.png", buf.getvalue())
        lines += [f"![The paper's figures against ours: each of ours with its seed-aware "
                  f"95 % interval and a dot per seed]({assets.name}/summary.png)", "",
                  "*The paper's figures (orange, test split, with their own 95 % interval) "
                  "against ours (blue, validation split, seed-aware 95 % interval; black "
                  "dots: each seed).*", ""]
        root = assets.resolve().parent.parent
        lines += downloads(root, Path(records_dir).resolve(), assets.resolve(), checkpoint)
    lines += _scorecard_sections(claims, bias, shipped_eval, sample_root)
    lines += [records_note(records), ""]
    if profile:
        lines += [f"*Computed when this book was built (profile `{profile}`).*", ""]
    return "\n".join(lines)


def _scorecard_sections(claims: list[Claim], bias: list, shipped_eval,
                        sample_root) -> list[str]:
    heads = [c for c in claims if c.section == "headline"]
    steps = [c for c in claims if c.section == "table 5"]
    text = [c for c in claims if c.section == "text"]
    n = len(next(iter(claims)).per_seed) if claims else 0
    lines = ["## Scorecard: the paper's claims on real knees", "",
             "Each claim beside our value on the validation knees (the paper's figures are on "
             "its test split; ours never read the test split), our per-seed values, a "
             f"seed-aware 95 % interval ({METHOD}) and a verdict by the rules below. "
             "*The paper claims* gives the direction the paper claims a figure in: a floor "
             "(at least), a ceiling (at most) or a value (about).", "",
             "### Headline figures (abstract, Tables 3-5)", "",
             _value_frame(heads).to_markdown(index=False), "",
             "### Table 5, step by step", "",
             "Seed-paired differences: seed s of one configuration against seed s of the "
             "other, on the same knees.", "", _steps_frame(steps).to_markdown(index=False), "",
             "### Per grade (Tables 3 and 4)", "", "The proposed model (Table 4):", "",
             _grade_frame(claims, "proposed").to_markdown(index=False), "",
             "The raw-only baseline (Table 3):", "",
             _grade_frame(claims, "raw").to_markdown(index=False), "",
             "### Claims of the text", "",
             _text_frame(text, _clip_row(sample_root)).to_markdown(index=False), ""]
    lines += _selection_lines(bias)
    off = sum(c.verdict == NOT_TESTABLE for c in claims)
    if off:
        lines += [f"{off} rows are *{NOT_TESTABLE}*: their records were made on a copy of "
                  "the data whose every crop had been through CLAHE (clip 5.0, 8 x 8) before "
                  "the paper's pipeline, so the model's \"raw\" stream saw an enhanced image "
                  "and its CLAHE stream a second pass. Every row that needs the raw "
                  "radiograph (the single-stream configurations' figures, the steps with one "
                  "of them, the gate's leaning) needs records trained on the original crops; "
                  "their numbers are shown, not judged.", ""]
    lines += _rules_lines(n)
    lines += _shipped_lines(shipped_eval)
    return lines


def _rules_lines(seeds: int) -> list[str]:
    """The verdict rules, from the table the code reads (:data:`RULES`), and the
    tolerances, computed."""
    kl4 = next(p for p in PAPER_CLAIMS if p.key == "table4/recall/KL4")
    tol = tolerance(kl4.paper.value, kl4.paper.support)
    from scipy import stats

    return ["### How the verdicts are read", "",
            "The first rule that applies gives the word:", "",
            pd.DataFrame([(r.word, r.kinds, r.when) for r in RULES],
                         columns=["verdict", "for", "when"]).to_markdown(index=False), "",
            f"Tolerance: ±{TOLERANCE['points']:g} points or ±{TOLERANCE['fraction']:g} (ours; "
            "the paper states none), or the paper's own 95 % sampling error on the claim "
            f"where that is wider (KL4 recall on {kl4.paper.support} test knees: "
            f"±{tol:.3f}). A word about direction or agreement needs {MIN_SEEDS} seeds in "
            f"every arm; with {seeds or MIN_SEEDS} seeds the seed part of an interval is "
            f"t = {stats.t.ppf(0.975, max(seeds, 2) - 1):.2f} times the seeds' standard "
            "error.", ""]


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
