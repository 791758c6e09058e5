"""Runs shared between chapters (paper §2.4, Table 5): reuse or resume a finished run of
a config, the proposed model's run, settings beside the paper's, learning curves, the
ablation table.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from koa_core.config import config_to_dict, load_config
from koa_core.errors import KoaError
from koa_core.infer.evaluate import evaluate_checkpoint
from koa_core.paper import TABLE5
from koa_core.report.paper import ABLATIONS
from koa_core.report.predictions import predict_split
from koa_core.report.published import (
    history_frame,
    load_records,
    record_frame,
    record_history,
    record_summary,
    records_note,
    selected_record_name,
)
from koa_core.train.engine import fit
from koa_core.train.runs import read_run, summarize_run
from koa_core.train.selection import LAST


def read_history(run_dir: str | Path) -> pd.DataFrame:
    """The run's ``history.csv`` (one row per epoch); empty if there is none yet."""
    return history_frame(read_run(run_dir)["history"])


def run_status(run_dir: str | Path, cfg) -> str:
    """``"empty"``, ``"other"`` (a different config), ``"partial"`` or ``"complete"``."""
    run_dir = Path(run_dir)
    saved = read_run(run_dir)["config"]
    if saved is None:
        return "other" if run_dir.exists() and any(run_dir.iterdir()) else "empty"
    if saved != yaml.safe_load(yaml.safe_dump(config_to_dict(cfg))):
        return "other"
    hist = read_history(run_dir)
    if hist.empty or not (run_dir / "best.safetensors").exists():
        return "partial"
    score = (hist["epoch"] if cfg.train.select_metric == LAST
             else hist[f"val_{cfg.train.select_metric}"]).to_numpy()
    stale = len(score) - 1 - int(np.argmax(score))  # fit keeps the first best epoch
    done = len(hist) >= cfg.train.epochs or stale >= cfg.train.patience
    return "complete" if done else "partial"


def train_or_reuse(run_dir: str | Path, profiles: Sequence[str] | str,
                   sets: Sequence[str] = (), data_root: str | Path | None = None,
                   progress: bool = False, fit_fn: Callable | None = None) -> Path:
    """A finished run of ``load_config(profiles, sets)`` (with ``data.root = data_root``).

    Reuses ``run_dir`` when it holds ``best.safetensors`` and a ``config.yaml`` equal to
    the resolved config, resumes it when that run was interrupted, else trains there.
    A ``run_dir`` holding another config is never overwritten: the run then goes to
    ``<run_dir>-<hash of the config>`` (same rules). Returns the run folder used.
    """
    fit_fn = fit_fn or fit
    cfg = load_config(list([profiles] if isinstance(profiles, str) else profiles), list(sets))
    if data_root:
        cfg.data.root = str(data_root)
    run_dir = Path(run_dir)
    status = run_status(run_dir, cfg)
    if status == "other":
        digest = hashlib.sha256(yaml.safe_dump(config_to_dict(cfg)).encode()).hexdigest()[:8]
        run_dir = run_dir.with_name(f"{run_dir.name}-{digest}")
        status = run_status(run_dir, cfg)
        if status == "other":
            raise KoaError(f"{run_dir}: holds files that are not this run; remove it")
    if status != "complete":
        fit_fn(cfg, run_dir, resume=status == "partial"
               and (run_dir / "last_state.safetensors").exists(), progress=progress)
    return run_dir


def proposed_checkpoint(checkpoint: str | Path, runs_dir: str | Path, profiles: Sequence[str],
                        sets: Sequence[str] = (), data_root: str | Path | None = None) -> Path:
    """``checkpoint`` when given, else the best checkpoint of :func:`proposed_run`."""
    if checkpoint:
        return Path(checkpoint)
    return proposed_run(runs_dir, profiles, sets, data_root) / "best.safetensors"


def proposed_run(runs_dir: str | Path, profiles: Sequence[str], sets: Sequence[str] = (),
                 data_root: str | Path | None = None) -> Path:
    """The proposed model's run, shared by the training, ablation, evaluation and Grad-CAM
    chapters (``runs_dir/proposed``, the ``ablation-proposed`` config on the profiles)."""
    return train_or_reuse(Path(runs_dir) / "proposed", [*profiles, "ablation-proposed"], sets,
                          data_root)


@dataclass
class ProposedModel:
    """The training chapter's proposed model: its committed record (published book) or its
    run made here; exactly one of the two is set."""

    record: dict | None = None
    run: Path | None = None

    def notes(self) -> list[str]:
        """Where the figures come from, for a record (a run made here needs no note)."""
        if self.record is None:
            return []
        return ["From the committed record of the shipped checkpoint's run. "
                + records_note({self.record["name"]: self.record})]

    def summary(self) -> pd.DataFrame:
        return record_summary(self.record) if self.record is not None else run_summary(self.run)

    def config(self) -> pd.DataFrame:
        """Its settings beside the paper's (:func:`config_table`)."""
        return config_table(self.record["config"] if self.record is not None else self.run)

    def history(self) -> pd.DataFrame:
        return record_history(self.record) if self.record is not None else read_history(self.run)

    def val_predictions(self, data_root: str | Path) -> pd.DataFrame:
        """Per validation image: grade, prediction, probabilities and the gate."""
        if self.record is not None:
            return record_frame(self.record)
        return predict_split(self.run / "best.safetensors", data_root, "val")


def proposed_model(records_dir: str | Path, runs_dir: str | Path, profiles: Sequence[str],
                   sets: Sequence[str] = (), data_root: str | Path | None = None
                   ) -> ProposedModel:
    """Decide once where the training chapter's proposed model comes from: the selected
    record under ``records_dir`` when it is set, else :func:`proposed_run` (trained or
    reused here)."""
    if records_dir:
        record = load_records(records_dir)[selected_record_name(records_dir)]
        return ProposedModel(record=record)
    return ProposedModel(run=proposed_run(runs_dir, profiles, sets, data_root))


# Settings of the proposed model: where the paper gives them, and where it is silent.
_PAPER_SETTINGS = [
    ("data.image_size", "224 (§2.2)"), ("preprocess.clahe_clip", "2.0 (§2.3)"),
    ("model.streams", "dual (§2.4)"), ("model.cross_attention", "yes (§2.4b)"),
    ("model.fusion", "gated (§2.4c)"), ("model.attention_heads", "silent"),
    ("model.dropout", "0.4 (§2.3)"), ("model.aux_heads", "yes (§4)"),
    ("model.pretrained", "ImageNet (§2.4)"), ("loss.gamma", "2 (§2.3b)"),
    ("loss.alpha", "Table 2"), ("loss.aux_binary_weight", "silent"),
    ("loss.aux_early_weight", "silent"), ("train.epochs", "silent"),
    ("train.batch_size", "silent"), ("train.lr", "silent (optimizer too)"),
    ("train.warmup_epochs", "silent"), ("train.select_metric", "silent"),
]


def config_table(run_dir: str | Path | dict) -> pd.DataFrame:
    """Key settings of a run (its ``config.yaml``, or that config as a dict, e.g. a
    record's) beside what the paper says about each."""
    cfg = run_dir if isinstance(run_dir, dict) else read_run(run_dir, need=("config",))["config"]
    rows = []
    for key, paper in _PAPER_SETTINGS:
        section, name = key.split(".")
        rows.append((key, str(cfg[section][name]), paper))
    return pd.DataFrame(rows, columns=["setting", "this run", "paper"]).set_index("setting")


def run_summary(run_dir: str | Path) -> pd.DataFrame:
    """Epochs run, the selected epoch and its validation metrics, training time, hardware."""
    r = summarize_run(run_dir)
    rows = {"epochs run": r["epochs"], "selected epoch (best val macro F1)": r["selected"],
            "val accuracy": round(r["val_accuracy"], 4),
            "val macro F1": round(r["val_macro_f1"], 4), "val QWK": round(r["val_qwk"], 4),
            "training time (s)": round(r["train_seconds"]), "hardware": r["hardware"]}
    return pd.DataFrame({"value": [str(v) for v in rows.values()]}, index=list(rows))


def learning_curves(history: pd.DataFrame):
    """Loss, accuracy, validation macro F1 / QWK and learning rate per epoch."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(13, 3.1))
    h = history
    axes[0].plot(h.epoch, h.train_loss, "o-", label="total")
    axes[0].plot(h.epoch, h.train_main, "o--", label="main focal")
    axes[1].plot(h.epoch, h.train_accuracy, "o-", label="train")
    axes[1].plot(h.epoch, h.val_accuracy, "o-", label="validation")
    axes[2].plot(h.epoch, h.val_macro_f1, "o-", label="macro F1")
    axes[2].plot(h.epoch, h.val_qwk, "o-", label="QWK")
    axes[3].plot(h.epoch, h.lr, "o-")
    for ax, t in zip(axes, ("training loss", "accuracy", "validation", "lr at epoch start")):
        ax.set(xlabel="epoch", title=t)
        if ax is not axes[3]:
            ax.legend()
    fig.tight_layout()
    return fig


def run_ablation(runs_dir: str | Path, profiles: Sequence[str], sets: Sequence[str] = (),
                 data_root: str | Path | None = None, configs: Sequence[str] | None = None,
                 labels: dict[str, str] | None = None) -> pd.DataFrame:
    """Train (or reuse) each configuration, evaluate it on validation and test.

    ``configs`` defaults to Table 5's four rows; other bundled configs (e.g.
    ``ablation-no-aux``) may be added, ``labels`` names them. The proposed row reuses
    :func:`proposed_run`'s folder.
    """
    names = {c: n for n, c, _ in ABLATIONS} | dict(labels or {})
    rows = []
    for c in configs or [c for _, c, _ in ABLATIONS]:
        run = Path(runs_dir) / ("proposed" if c == "ablation-proposed" else c)
        run = train_or_reuse(run, [*profiles, c], sets, data_root)
        m = {s: evaluate_checkpoint(run / "best.safetensors", data_root, s, n_boot=0)
             for s in ("val", "test")}
        rows.append({"configuration": names.get(c, c), "config": c,
                     "val accuracy %": 100 * m["val"]["accuracy"],
                     "val macro F1": m["val"]["macro_f1"],
                     "test accuracy %": 100 * m["test"]["accuracy"],
                     "test macro F1": m["test"]["macro_f1"], "test QWK": m["test"]["qwk"],
                     "paper test accuracy %": TABLE5.get(c.removeprefix("ablation-"), np.nan),
                     "run": run.name})
    df = pd.DataFrame(rows).set_index("configuration")
    df.insert(5, "ours vs row 1", df["test accuracy %"] - df["test accuracy %"].iloc[0])
    paper = df["paper test accuracy %"]
    df.insert(7, "paper vs row 1", paper - paper.iloc[0])
    return df.round(4)


def ablation_figure(df: pd.DataFrame, label: str = "ours"):
    """Test accuracy per configuration, ours beside the paper's Table 5."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 3.3))
    y = np.arange(len(df))
    ax.barh(y + 0.2, df["test accuracy %"], 0.4, label=label)
    ax.barh(y - 0.2, df["paper test accuracy %"].fillna(0), 0.4, label="paper, Table 5")
    ax.set(yticks=y, yticklabels=df.index, xlabel="test accuracy (%)", xlim=(0, 100))
    ax.invert_yaxis()
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig
