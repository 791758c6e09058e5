"""Grad-CAM panels (paper Fig. 7): correct and misclassified cases, both streams, the
predicted grade against the other classes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .clahe import _joint_box


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
    from ..checkpoint import load_checkpoint
    from ..explain import grad_cam, stream_layers
    from ..inference import preprocessor_from_sidecar

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

    from ..explain import overlay

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
