"""Chapter set-up: seeds and display defaults, the phantom or real data root, the
parameter table every page starts with.
"""

from __future__ import annotations

import random
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from koa_core.data.phantom import write_phantom


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


def show(parts: list) -> None:
    """Display each part on the page in turn, a string as Markdown (a chapter module's
    section returns its parts; an empty list shows nothing)."""
    from IPython.display import Markdown, display

    for part in parts:
        display(Markdown(part) if isinstance(part, str) else part)


def ensure_phantom(folder: str | Path, per_class: int = 60, seed: int = 0, size: int = 224,
                   proportions: str = "paper") -> Path:
    """The synthetic phantom in ``folder`` (written once; a ``.complete`` file marks it)."""
    folder = Path(folder)
    if not (folder / ".complete").exists():
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
