"""Tables, figures and run helpers for the book's chapters (the notebooks stay thin).

Every chapter of the book shows the paper's own numbers next to ours. The paper's figures
are images we do not have, so its numbers come from its tables (Tables 1-5 and 7, the
class totals printed in Fig. 1) and are held here as constants, copied as printed,
slips included; :func:`paper_count_slips` lists the slips. The rest are small helpers:
dataset tables (§2.1), CLAHE measures (§2.2, Figs. 2-3), the loss-weighting table
(§2.3b, Table 2), run reuse and learning curves (§2.4), per-image predictions and fusion
gates, the ablation (Table 5), classification reports and confusion matrices (Tables
3-4, Figs. 5-6), the comparison with published work (Table 7) and Grad-CAM panels
(Fig. 7). Figures are made with pyplot, so a notebook shows each one once, when the
cell ends; tables are pandas DataFrames.
"""

from __future__ import annotations

import json
import random
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import yaml

from . import GRADE_NAMES
from .config import PAPER_ALPHA, config_to_dict, load_config
from .errors import KoaError

__all__ = [
    "sample_images",
    "run_summary",
    "resolve_root",
    "parameter_table",
    "config_table",
    "clahe_verdict",
    "cam_share_table",
    "ABLATIONS",
    "KL",
    "PAPER_FIG1_COUNTS",
    "PAPER_TABLE1",
    "PAPER_TABLE3",
    "PAPER_TABLE4",
    "PAPER_TABLE5",
    "PAPER_TABLE7",
    "PUBLISHED",
    "ablation_figure",
    "cam_cases",
    "cam_figure",
    "ci_table",
    "clahe_figure",
    "clahe_measures",
    "clahe_table",
    "comparison_table",
    "confusion_figure",
    "counts_table",
    "crop_example",
    "ensure_phantom",
    "focal_figure",
    "gate_figure",
    "gate_table",
    "influence_table",
    "kl4_table",
    "leakage_table",
    "learning_curves",
    "paper_correct_counts",
    "paper_count_slips",
    "paper_counts_table",
    "paper_report_table",
    "pick_cases",
    "predict_split",
    "proposed_checkpoint",
    "proposed_run",
    "read_history",
    "report_table",
    "run_ablation",
    "run_status",
    "sample_grid",
    "setup",
    "share_figure",
    "train_or_reuse",
]

KL = [f"KL{g}" for g in range(5)]

# ---------------------------------------------------------------- the paper's numbers
PAPER_FIG1_COUNTS = (3857, 1770, 2578, 1786, 295)  # Fig. 1 (sums to 10,286)
PAPER_TABLE1 = {"train": (2286, 1046, 1516, 757, 173), "val": (328, 153, 212, 106, 27),
                "test": (639, 296, 447, 223, 51)}  # Table 1 (5,778 / 826 / 1,656)
# Tables 3 (raw only) and 4 (proposed): per grade (precision, recall, F1, support), then
# (accuracy, n), macro and weighted (precision, recall, F1).
PAPER_TABLE3 = {"per_class": [(0.6469, 0.8858, 0.7477, 639), (0.6805, 0.5541, 0.6108, 296),
                              (0.6065, 0.5034, 0.5501, 447), (0.9111, 0.3677, 0.5240, 223),
                              (0.5190, 0.8039, 0.6308, 51)],
                "accuracy": (0.6510, 1656), "macro": (0.6728, 0.6230, 0.6127),
                "weighted": (0.6736, 0.6510, 0.6362)}
PAPER_TABLE4 = {"per_class": [(0.7607, 0.8607, 0.8076, 639), (0.7675, 0.5912, 0.6679, 296),
                              (0.6732, 0.6897, 0.6814, 448), (0.7643, 0.5381, 0.6316, 223),
                              (0.4444, 0.7843, 0.5674, 51)],
                "accuracy": (0.7206, 1657), "macro": (0.6820, 0.6928, 0.6712),
                "weighted": (0.7290, 0.7206, 0.7175)}
# Table 5: (configuration, bundled config, test accuracy %).
ABLATIONS = [("Single-stream (CLAHE only)", "ablation-clahe", 61.84),
             ("Single-stream (Raw only)", "ablation-raw", 65.10),
             ("Dual-stream (Raw + CLAHE, no attention)", "ablation-dual-noattn", 70.47),
             ("Proposed (dual-stream + attention)", "ablation-proposed", 72.06)]
PAPER_TABLE5 = {name: acc for name, _, acc in ABLATIONS}
PAPER_TABLE7 = [("VGG-19 + ordinal loss [19]", 69.7, 0.68), ("ResNet-101 [20]", 69.0, 0.65),
                ("InceptionV3 [21]", 67.0, 0.66), ("DenseNet-121 [22]", 71.0, 0.70),
                ("Proposed (dual + cross-attention)", 72.06, 0.67)]
# Published results on the same public split, as published (not re-measured here).
PUBLISHED = [
    ("Chen et al. 2019", "VGG-19 + ordinal loss", 69.7, "MAE ~0.34", "official split"),
    ("Jain et al. 2023 (OsteoHRNet)", "HRNet + attention", 71.74, "MAE 0.311", ""),
    ("Pi et al. 2023", "ensemble of 8 CNNs", 76.93, "F1 0.767",
     "checkpoints appear to have been chosen with test accuracy"),
    ("Li et al. 2026 (AGE-Net)", "ConvNeXt-B + evidential ordinal head", None,
     "QWK 0.902 +- 0.005 (3 seeds)", ""),
    ("Alkhatatbeh et al. 2026 (KL-FuseNet)", "ConvNeXt-B + ResNet-50, multitask", 70.3,
     "QWK 0.881", "their own patient-wise re-split"),
    ("Momenpour & Abu Mallouh 2025", "EfficientNet-B5 + label cleaning", 82.07, "",
     "labels were changed; 69% before"),
]


def setup(seed: int = 0, threads: int = 0) -> None:
    """Seed python/numpy/torch, optionally cap torch's threads, set plot and table defaults."""
    import matplotlib.pyplot as plt
    import torch

    # tqdm.auto (used by the engine with progress off) warns in a kernel without ipywidgets;
    # the warning would show as an stderr cell on the page and says nothing about the data.
    warnings.filterwarnings("ignore", message="IProgress not found")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if threads:
        torch.set_num_threads(int(threads))
    plt.rcParams.update({"figure.dpi": 90, "savefig.dpi": 90, "axes.grid": False})
    pd.set_option("display.precision", 4)
    pd.set_option("display.max_colwidth", 120)  # notes in tables are read whole


def ensure_phantom(folder: str | Path, per_class: int = 60, seed: int = 0, size: int = 224,
                   proportions: str = "paper") -> Path:
    """The synthetic phantom in ``folder`` (written once; a ``.complete`` file marks it)."""
    from .phantom import write_phantom

    folder = Path(folder)
    if not (folder / ".complete").exists():
        import shutil
        shutil.rmtree(folder, ignore_errors=True)
        write_phantom(folder, per_class=per_class, seed=seed, size=size,
                      proportions=proportions)
        (folder / ".complete").write_text("ok\n")
    return folder


def resolve_root(data_root: str | Path, runs_dir: str | Path) -> Path:
    """The dataset root to use: ``data_root``, or (empty) a small phantom under ``runs_dir``."""
    return Path(data_root) if data_root else ensure_phantom(Path(runs_dir) / "phantom")


def _short(value):
    """A path as its last part (a file as folder/name): pages never show where a build ran."""
    if isinstance(value, Path) or (isinstance(value, str) and Path(value).is_absolute()):
        p = Path(value)
        return "/".join(p.parts[-2:]) if p.suffix else p.name
    return value


def parameter_table(**params) -> pd.DataFrame:
    """The parameters a page was built with; paths are shown by their last part only."""
    shown = [str(_short(v)) if v != "" else "(empty)" for v in params.values()]
    return pd.DataFrame({"value": shown}, index=list(params)).rename_axis("parameter")


# ---------------------------------------------------------------- data (§2.1, Table 1)
def _counts_frame(counts: dict[str, Sequence[int]]) -> pd.DataFrame:
    df = pd.DataFrame({s: list(c) for s, c in counts.items()}, index=KL)
    df["total"] = df.sum(axis=1)
    df["share %"] = (100 * df["total"] / df["total"].sum()).round(2)
    df["KL0 : KLk"] = (df["total"].iloc[0] / df["total"].replace(0, np.nan)).round(1)
    total = df.drop(columns=["share %", "KL0 : KLk"]).sum().to_frame("total").T
    df = pd.concat([df, total.assign(**{"share %": 100.0})])
    df["KL0 : KLk"] = df["KL0 : KLk"].astype(object).where(df["KL0 : KLk"].notna(), "")
    return df


def counts_table(index) -> pd.DataFrame:
    """Images per grade and split of a :class:`~koa_core.data.DatasetIndex`, with shares
    and the imbalance ratio KL0 : KLk."""
    return _counts_frame({s: [c[g] for g in range(5)] for s, c in index.counts().items()})


def paper_counts_table() -> pd.DataFrame:
    """The paper's Table 1 in the layout of :func:`counts_table`, plus Fig. 1's totals."""
    df = _counts_frame(PAPER_TABLE1)
    df.insert(4, "Fig. 1 total", list(PAPER_FIG1_COUNTS) + [sum(PAPER_FIG1_COUNTS)])
    return df


def paper_count_slips() -> pd.DataFrame:
    """Where the paper's own counts disagree with each other (reported, not copied)."""
    rows = [("images in the dataset", "abstract, §2.1, §2.3a", "9,786",
             "Table 1 (the split counts, which match the data) totals 8,260"),
            ("KL3 images", "Fig. 1", "1,786", "then the grades sum to 10,286, not 9,786"),
            ("KL3 images", "Table 2", "1,286", "agrees with Table 2's 13.14 % of 9,786"),
            ("KL3 images", "Table 1", "1,086", "the split counts; they match the data"),
            ("test support", "Table 4", "448 (KL2) / 1,657", "Table 3 and Table 1: 447 / 1,656"),
            ("Table 2 shares", "Table 2", "sum to 94.0 %", "shares should sum to 100 %")]
    return pd.DataFrame(rows, columns=["quantity", "where", "paper says", "but"])


def share_figure(ours: pd.DataFrame, paper: pd.DataFrame, label: str = "ours"):
    """Bar chart of the grade shares (%), ours beside the paper's Table 1."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    x = np.arange(5)
    ax.bar(x - 0.2, ours["share %"].iloc[:5], 0.4, label=label)
    ax.bar(x + 0.2, paper["share %"].iloc[:5], 0.4, label="paper, Table 1")
    ax.set(xticks=x, xticklabels=KL, ylabel="share of images (%)", title="Grade distribution")
    ax.legend()
    fig.tight_layout()
    return fig


def sample_grid(index, per_grade: int = 4, split: str = "train", seed: int = 0):
    """One row per grade of randomly chosen images of a split (like the paper's Fig. 1)."""
    import matplotlib.pyplot as plt

    from .imaging import read_gray

    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(5, per_grade, figsize=(1.5 * per_grade + 0.4, 7.6),
                             squeeze=False)
    for g in range(5):
        recs = [r for r in index.split(split) if r.grade == g]
        picks = rng.permutation(len(recs))[:per_grade]
        for j, ax in enumerate(axes[g]):
            if j < len(picks):
                ax.imshow(read_gray(recs[picks[j]].path), cmap="gray", vmin=0, vmax=255)
            ax.set(xticks=[], yticks=[])
        axes[g][0].set_ylabel(GRADE_NAMES[g].replace(" ", "\n"))
    fig.tight_layout()
    return fig


def leakage_table(report) -> pd.DataFrame:
    """The patient/leakage facts of a :class:`~koa_core.datacheck.ScanReport`, one per row."""
    idx = report.index
    leaks = report.leaks
    rows = [(f"patients in {s}", n, "") for s, n in idx.patients().items()]
    rows += [("patients in more than one split", len(leaks),
              "ok" if not leaks else "LEAK, e.g. " + ", ".join(list(leaks)[:3])),
             ("identical files in two splits", len(report.duplicates),
              "ok" if not report.duplicates else "LEAK"),
             ("unreadable images", len(report.unreadable), "ok" if not report.unreadable
              else report.unreadable[0]),
             ("image sizes", ", ".join(report.sizes), ""),
             ("usable for training", "yes" if report.usable() else "no",
              "; ".join(report.problems()))]
    return pd.DataFrame(rows, columns=["check", "value", "verdict"]).set_index("check")


# ---------------------------------------------------------------- preprocessing (§2.2)
def crop_example(img: np.ndarray, pad: int = 40, extra_width: float = 0.35):
    """Figure: the image inside black padding and a wider field (a raw radiograph's look),
    and what :func:`~koa_core.preprocess.central_crop` keeps of it."""
    import matplotlib.pyplot as plt

    from .preprocess import central_crop

    w = img.shape[1]
    side = int(extra_width * w)
    wide = cv2.copyMakeBorder(img, pad, pad, pad + side, pad, cv2.BORDER_CONSTANT, value=0)
    fig, axes = plt.subplots(1, 2, figsize=(7, 3.2))
    for ax, im, title in zip(axes, (wide, central_crop(wide)), ("input", "central crop")):
        ax.imshow(im, cmap="gray", vmin=0, vmax=255)
        ax.set(xticks=[], yticks=[], title=f"{title} {im.shape[1]}x{im.shape[0]}")
    fig.tight_layout()
    return fig


def sample_images(index, n: int = 40, split: str = "train", seed: int = 0
                  ) -> tuple[list[np.ndarray], list[int]]:
    """``n`` decoded, centrally cropped images of a split (grade-stratified, seeded) at their
    own size, and their grades."""
    from .dataset import stratified_subset
    from .imaging import read_gray
    from .preprocess import central_crop

    recs = stratified_subset(index.split(split), n, seed=seed)
    return [central_crop(read_gray(r.path)) for r in recs], [r.grade for r in recs]


def _joint_box(img: np.ndarray) -> tuple[slice, slice]:
    h, w = img.shape
    return slice(int(0.35 * h), int(0.65 * h)), slice(int(0.15 * w), int(0.85 * w))


def _gradient(f: np.ndarray) -> np.ndarray:
    return np.hypot(cv2.Sobel(f, cv2.CV_32F, 1, 0), cv2.Sobel(f, cv2.CV_32F, 0, 1))


def _flat_mask(img: np.ndarray, quantile: float = 0.2) -> np.ndarray:
    """Pixels of the smoothest regions of the raw image (low local gradient)."""
    f = cv2.GaussianBlur(img.astype(np.float32), (0, 0), 1.0)
    grad = cv2.GaussianBlur(_gradient(f), (0, 0), 4.0)
    return grad <= np.quantile(grad, quantile)


def clahe_measures(img: np.ndarray, clip: float | None, tiles: int = 8,
                   flat: np.ndarray | None = None) -> dict[str, float]:
    """Contrast and noise of the raw image (``clip=None``) or of its CLAHE version.

    ``rms_contrast``: std of intensities in [0, 1]. ``joint_edge``: mean Sobel gradient
    magnitude (per unit intensity) in the central joint band. ``flat_noise``: std of the
    high-pass residual (image minus a Gaussian blur, sigma 1.5) over the smoothest 20 % of
    the raw image (``flat``), where any added texture is amplified noise.
    """
    from .preprocess import apply_clahe

    out = img if clip is None else apply_clahe(img, clip, tiles)
    flat = _flat_mask(img) if flat is None else flat
    f = out.astype(np.float32) / 255.0
    rows, cols = _joint_box(f)
    grad = _gradient(f)
    resid = f - cv2.GaussianBlur(f, (0, 0), 1.5)
    return {"rms_contrast": float(f.std()), "joint_edge": float(grad[rows, cols].mean()),
            "flat_noise": float(resid[flat].std())}


def clahe_table(images: Sequence[np.ndarray], clips: Sequence[float] = (1.0, 2.0, 3.0),
                tiles: int = 8) -> pd.DataFrame:
    """Mean of each measure over the images, per clip limit (first row: the raw image),
    with gains relative to raw and ``edge/noise`` = joint-edge gain / noise gain. Note that
    OpenCV's clip limit is per tile area: on small images (e.g. 64 px, 8 x 8 tiles) every
    clip limit below 4 clips at one count per bin, and the versions coincide."""
    rows = []
    for img in images:
        flat = _flat_mask(img)
        base = clahe_measures(img, None, tiles, flat)
        for clip in [None, *clips]:
            m = clahe_measures(img, clip, tiles, flat)
            gains = {f"{k} gain": m[k] / base[k] for k in ("joint_edge", "flat_noise")}
            rows.append({"clip": "raw" if clip is None else f"{clip:g}", **m, **gains})
    df = pd.DataFrame(rows).groupby("clip", sort=False).mean()
    df["edge/noise"] = df["joint_edge gain"] / df["flat_noise gain"]
    return df


def clahe_figure(images: Sequence[np.ndarray], clips: Sequence[float] = (1.0, 2.0, 3.0),
                 labels: Sequence[str] | None = None, tiles: int = 8):
    """Rows of images, columns raw then CLAHE at each clip limit (Figs. 2-3 side by side)."""
    import matplotlib.pyplot as plt

    from .preprocess import apply_clahe

    cols = [("raw", None)] + [(f"CLAHE clip {c:g}", c) for c in clips]
    fig, axes = plt.subplots(len(images), len(cols), squeeze=False,
                             figsize=(2.3 * len(cols), 2.3 * len(images)))
    for i, img in enumerate(images):
        for j, (title, clip) in enumerate(cols):
            axes[i][j].imshow(img if clip is None else apply_clahe(img, clip, tiles),
                              cmap="gray", vmin=0, vmax=255)
            axes[i][j].set(xticks=[], yticks=[], title=title if i == 0 else "")
        if labels is not None:
            axes[i][0].set_ylabel(labels[i])
    fig.tight_layout()
    return fig


def clahe_verdict(table: pd.DataFrame, chosen: str = "2") -> str:
    """One paragraph (Markdown) saying what :func:`clahe_table` shows about the clip limits."""
    t = table.drop(index="raw")
    best = str(t["edge/noise"].idxmax())
    gains = ", ".join(f"{c}: x{e:.2f} edges, x{n:.2f} noise" for c, e, n in
                      zip(t.index, t["joint_edge gain"], t["flat_noise gain"]))
    steady = all((np.diff(t[k]) > 0).all() for k in ("joint_edge gain", "flat_noise gain"))
    trend = ("both edges and noise grow with the clip limit" if steady
             else "edges and noise do not both grow steadily with the clip limit")
    text = (f"Against the raw image ({gains}), {trend}. "
            f"The ratio of edge gain to noise gain is highest at clip {best}")
    if (t["edge/noise"] < 1).all():
        text = (f"{text}. At every clip limit CLAHE amplifies flat-region texture more than it "
                "sharpens the joint (edge/noise below 1)")
    if best == chosen:
        return text + f"; this supports the paper's choice of {chosen}.0."
    return text + (f"; by this measure the numbers do not single out the paper's {chosen}.0, "
                   "whose choice in the paper rests on visual quality.")


# ---------------------------------------------------------------- loss (§2.3b, Table 2)
def influence_table(counts: Sequence[int], alpha=PAPER_ALPHA, gamma: float = 2.0,
                    paper: Sequence[float] | None = None) -> pd.DataFrame:
    """Table 2 recomputed with :func:`~koa_core.losses.effective_influence_share`.

    Columns: count, share before (%), alpha, share after alpha (%), share after alpha and
    the focal factor with each grade's typical p = its class prior (%), and the paper's
    column when given.
    """
    import torch

    from .losses import effective_influence_share, resolve_alpha

    counts = [int(c) for c in counts]
    prior = [c / sum(counts) for c in counts]
    s = effective_influence_share(counts, alpha, gamma)
    sp = effective_influence_share(counts, alpha, gamma, p_correct=prior)
    a = resolve_alpha(alpha, counts) if not isinstance(alpha, torch.Tensor) else alpha
    df = pd.DataFrame({"count": counts, "share before %": np.multiply(s["before"], 100),
                       "alpha": [round(float(v), 4) for v in a],
                       "after alpha %": np.multiply(s["after_alpha"], 100),
                       "after alpha + focal (p = prior) %":
                           np.multiply(sp["after_alpha_gamma"], 100)}, index=KL)
    if paper is not None:
        df["paper %"] = list(paper)
    return df.round(2).assign(alpha=df["alpha"])  # alpha keeps its printed three digits


def focal_figure(gammas: Sequence[float] = (0, 1, 2, 3, 5)):
    """Loss against p of the true grade, computed with :func:`~koa_core.losses.focal_loss`
    (gamma = 0 is cross-entropy), and the focal factor (1-p)^gamma scaling each sample."""
    import matplotlib.pyplot as plt
    import torch

    from .losses import focal_loss

    p = np.linspace(0.01, 0.99, 197)
    logits = torch.tensor(np.log(np.stack([p, 1 - p], axis=1)), dtype=torch.float32)
    target = torch.zeros(len(p), dtype=torch.long)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for g in gammas:
        label, lw = ("cross-entropy" if g == 0 else f"focal, gamma = {g:g}"), 2.2 if g == 2 else 1.2
        loss = focal_loss(logits, target, gamma=float(g), reduction="none").numpy()
        axes[0].plot(p, loss, label=label, lw=lw)
        axes[1].plot(p, (1 - p) ** g, label=label, lw=lw)
    axes[0].set(xlabel="p of the true grade", ylabel="loss", ylim=(0, 4.6), title="loss")
    axes[1].set(xlabel="p of the true grade", ylabel="(1 - p)^gamma", title="focal factor")
    axes[0].legend()
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- runs (§2.4)
def read_history(run_dir: str | Path) -> pd.DataFrame:
    """The run's ``history.csv`` (one row per epoch); empty if there is none yet."""
    p = Path(run_dir) / "history.csv"
    return pd.read_csv(p) if p.exists() else pd.DataFrame()


def run_status(run_dir: str | Path, cfg) -> str:
    """``"empty"``, ``"other"`` (a different config), ``"partial"`` or ``"complete"``."""
    run_dir = Path(run_dir)
    saved = run_dir / "config.yaml"
    if not saved.exists():
        return "other" if run_dir.exists() and any(run_dir.iterdir()) else "empty"
    if yaml.safe_load(saved.read_text()) != yaml.safe_load(yaml.safe_dump(config_to_dict(cfg))):
        return "other"
    hist = read_history(run_dir)
    if hist.empty or not (run_dir / "best.safetensors").exists():
        return "partial"
    score = hist[f"val_{cfg.train.select_metric}"].to_numpy()
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
    from .engine import fit

    fit_fn = fit_fn or fit
    cfg = load_config(list([profiles] if isinstance(profiles, str) else profiles), list(sets))
    if data_root:
        cfg.data.root = str(data_root)
    run_dir = Path(run_dir)
    status = run_status(run_dir, cfg)
    if status == "other":
        import hashlib
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


def config_table(run_dir: str | Path) -> pd.DataFrame:
    """Key settings of a run (its ``config.yaml``) beside what the paper says about each."""
    cfg = yaml.safe_load((Path(run_dir) / "config.yaml").read_text())
    rows = []
    for key, paper in _PAPER_SETTINGS:
        section, name = key.split(".")
        rows.append((key, str(cfg[section][name]), paper))
    return pd.DataFrame(rows, columns=["setting", "this run", "paper"]).set_index("setting")


def run_summary(run_dir: str | Path) -> pd.DataFrame:
    """Epochs run, the selected epoch and its validation metrics, training time, hardware."""
    side = json.loads((Path(run_dir) / "best.json").read_text())
    hist, vm = read_history(run_dir), side["val_metrics"]
    rows = {"epochs run": len(hist), "selected epoch (best val macro F1)": side["epoch"],
            "val accuracy": round(vm["accuracy"], 4), "val macro F1": round(vm["macro_f1"], 4),
            "val QWK": round(vm["qwk"], 4), "training time (s)": round(hist.epoch_s.sum()),
            "hardware": side.get("hardware", "")}
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


def predict_split(checkpoint: str | Path, data_root: str | Path, split: str = "val",
                  cache_dir: str | None = None) -> pd.DataFrame:
    """One row per image of a split: path, grade, pred, p0..p4 and the gate w_raw (NaN for
    single-stream models)."""
    from .cache import ViewCache
    from .checkpoint import load_checkpoint
    from .data import discover
    from .engine import predict_views
    from .inference import preprocessor_from_sidecar

    model, side = load_checkpoint(checkpoint)
    recs = discover(data_root).split(split)
    views = ViewCache(cache_dir).get(recs, preprocessor_from_sidecar(side), root=str(data_root))
    probs, gates = predict_views(model, views)
    df = pd.DataFrame(probs, columns=[f"p{g}" for g in range(5)])
    df.insert(0, "path", [r.path for r in recs])
    df.insert(1, "grade", [r.grade for r in recs])
    df.insert(2, "pred", probs.argmax(1))
    df["gate_raw"] = gates[:, 0] if gates is not None else np.nan
    return df


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


# ---------------------------------------------------------------- ablation (Table 5)
def run_ablation(runs_dir: str | Path, profiles: Sequence[str], sets: Sequence[str] = (),
                 data_root: str | Path | None = None, configs: Sequence[str] | None = None,
                 labels: dict[str, str] | None = None) -> pd.DataFrame:
    """Train (or reuse) each configuration, evaluate it on validation and test.

    ``configs`` defaults to Table 5's four rows; other bundled configs (e.g.
    ``ablation-no-aux``) may be added, ``labels`` names them. The proposed row reuses
    :func:`proposed_run`'s folder.
    """
    from .inference import evaluate_checkpoint

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
                     "paper test accuracy %": PAPER_TABLE5.get(names.get(c, c), np.nan),
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


# ---------------------------------------------------------------- evaluation (Tables 3-4, 7)
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
    :func:`~koa_core.metrics.classification_metrics`."""
    pc = metrics["per_class"]
    per = [(pc[str(g)]["precision"], pc[str(g)]["recall"], pc[str(g)]["f1"],
            pc[str(g)]["support"]) for g in range(5)]
    avg = [tuple(metrics[k][x] for x in ("precision", "recall", "f1"))
           for k in ("macro_avg", "weighted_avg")]
    return _report_frame(per, metrics["accuracy"], metrics["n"], *avg)


def paper_report_table(table: int) -> pd.DataFrame:
    """The paper's Table 3 (raw-only) or Table 4 (proposed), as printed."""
    t = {3: PAPER_TABLE3, 4: PAPER_TABLE4}[table]
    return _report_frame(t["per_class"], *t["accuracy"], t["macro"], t["weighted"])


def paper_correct_counts(table: int) -> pd.DataFrame:
    """The diagonal of the paper's confusion matrix (Fig. 5 for table 3, Fig. 6 for 4),
    recovered as recall x support from the table: correctly graded images per grade."""
    t = {3: PAPER_TABLE3, 4: PAPER_TABLE4}[table]
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
    cols["paper (Table 4)"] = [0.7843, 40, 51]
    cols["paper (Table 3)"] = [0.8039, 41, 51]
    return pd.DataFrame(cols, index=["KL4 recall", "KL4 found", "KL4 test images"], dtype=object)


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
            for m, a, f in PAPER_TABLE7]
    rows += [(w, m, a, np.nan, o, c) for w, m, a, o, c in PUBLISHED]
    if ours is not None:
        rows.append((label, "dual-stream ResNet-18 + cross-attention", 100 * ours["accuracy"],
                     ours["macro_f1"], f"QWK {ours['qwk']:.3f}, MAE {ours['mae']:.3f}",
                     ours.get("note", "")))
    df = pd.DataFrame(rows, columns=["source", "model", "accuracy %", "F1", "other", "caveat"])
    df[["accuracy %", "F1"]] = df[["accuracy %", "F1"]].round(2)
    return df.astype(object).where(df.notna(), "")  # blank, not NaN, where none is published


# ---------------------------------------------------------------- Grad-CAM (Fig. 7)
def pick_cases(pred: pd.DataFrame, n_correct: int = 2, n_wrong: int = 2) -> pd.DataFrame:
    """Confident correct cases of distinct grades, and the most uncertain (highest-entropy)
    misclassified ones, as the paper's Fig. 7 discusses; adds top-1/top-2 and entropy."""
    p = pred[[f"p{g}" for g in range(5)]].to_numpy()
    order = np.argsort(-p, axis=1)
    d = pred.assign(top1=order[:, 0], top2=order[:, 1], confidence=p.max(axis=1),
                    entropy=-(p * np.log(np.clip(p, 1e-12, 1))).sum(axis=1))
    right = d[d.grade == d.pred].sort_values("confidence", ascending=False)
    right = right.drop_duplicates("grade").head(n_correct)
    wrong = d[d.grade != d.pred].sort_values("entropy", ascending=False).head(n_wrong)
    return pd.concat([right.assign(case="correct"), wrong.assign(case="misclassified")],
                     ignore_index=True)


def cam_cases(checkpoint: str | Path, cases: pd.DataFrame, other: str = "top2") -> list[dict]:
    """Grad-CAM maps of both streams for the top-1 class and for ``other`` (``"top2"`` or
    ``"true"``) per case, with the share of each map's mass inside the joint band."""
    from .checkpoint import load_checkpoint
    from .explain import grad_cam, stream_layers
    from .inference import preprocessor_from_sidecar

    model, side = load_checkpoint(checkpoint)
    pre = preprocessor_from_sidecar(side)
    out = []
    for _, c in cases.iterrows():
        views = np.stack(pre.load(c.path))
        targets = {"top-1": int(c.top1), other: int(c.top2 if other == "top2" else c.grade)}
        maps = {(s, t): grad_cam(model, views, k, s) for s in stream_layers(model)
                for t, k in targets.items()}
        out.append({"case": c, "views": views, "targets": targets, "maps": maps})
    return out


def _joint_focus(cam: np.ndarray) -> float:
    """Share of the map's mass in the central joint band over the band's share of the area:
    1 for a uniform map, above 1 when the map concentrates on the joint space, NaN for an
    empty map (Grad-CAM keeps only positive evidence, and there may be none)."""
    if cam.sum() <= 0:
        return float("nan")  # an empty map: no positive evidence for the class
    rows, cols = _joint_box(cam)
    band = cam[rows, cols]
    return float(band.sum() / cam.sum() / (band.size / cam.size))


def cam_figure(results: list[dict]):
    """One row per case: the raw view, then each stream's Grad-CAM for each target class;
    titles give the class and the map's joint focus (1 = uniform, above 1 = on the joint)."""
    import matplotlib.pyplot as plt

    from .explain import overlay

    keys = list(results[0]["maps"])
    fig, axes = plt.subplots(len(results), 1 + len(keys), squeeze=False,
                             figsize=(2.0 * (1 + len(keys)), 2.3 * len(results)))
    for row, r in zip(axes, results):
        c = r["case"]
        row[0].imshow(r["views"][0], cmap="gray", vmin=0, vmax=255)
        row[0].set_title(f"{c.case}\ntrue KL{c.grade}, pred KL{c.pred} ({c.confidence:.2f})",
                         fontsize=10)
        for ax, (stream, target) in zip(row[1:], keys):
            cam = r["maps"][(stream, target)]
            ax.imshow(overlay(r["views"][0 if stream == "raw" else 1], cam))
            focus = _joint_focus(cam)
            ax.set_title(f"{stream}, {target} = KL{r['targets'][target]}\n"
                         + ("empty map" if np.isnan(focus) else f"joint focus {focus:.2f}"),
                         fontsize=10)
        for ax in row:
            ax.set(xticks=[], yticks=[])
    fig.tight_layout()
    return fig



def cam_share_table(results: list[dict]) -> pd.DataFrame:
    """Joint focus of each Grad-CAM map (see :func:`cam_figure`) per case (rows) and stream
    and target (columns)."""
    rows = []
    for i, r in enumerate(results):
        c, t = r["case"], r["targets"]
        label = f"{i + 1}: {c.case}, true KL{c.grade}, " + ", ".join(
            f"{k} KL{v}" for k, v in t.items())
        for (stream, target), cam in r["maps"].items():
            rows.append({"case": label, "stream": stream, "target": target,
                         "joint focus": _joint_focus(cam)})
    return pd.DataFrame(rows).pivot_table(index="case", columns=["stream", "target"],
                                          values="joint focus", sort=False,
                                          dropna=False).round(3)
