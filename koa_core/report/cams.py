"""Grad-CAM panels (paper Fig. 7): correct and misclassified cases, both streams, the
predicted grade against the other classes.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from koa_core.data.preprocess import Preprocessor
from koa_core.infer.explain import overlay, stream_layers
from koa_core.model.checkpoint import load_checkpoint, read_sidecar
from koa_core.report.clahe import joint_box


def pick_cases(pred: pd.DataFrame, n_correct: int = 2, n_wrong: int = 2) -> pd.DataFrame:
    """Confident correct cases of distinct grades, and the most uncertain (highest-entropy)
    misclassified ones, as the paper's Fig. 7 discusses; adds the top-1, top-2 and top-5
    (least likely of the five) classes and the entropy."""
    p = pred[[f"p{g}" for g in range(5)]].to_numpy()
    order = np.argsort(-p, axis=1, kind="stable")
    d = pred.assign(top1=order[:, 0], top2=order[:, 1], top5=order[:, -1],
                    confidence=p.max(axis=1),
                    entropy=-(p * np.log(np.clip(p, 1e-12, 1))).sum(axis=1))
    right = d[d.grade == d.pred].sort_values("confidence", ascending=False)
    right = right.drop_duplicates("grade").head(n_correct)
    wrong = d[d.grade != d.pred].sort_values("entropy", ascending=False).head(n_wrong)
    return pd.concat([right.assign(case="correct"), wrong.assign(case="misclassified")],
                     ignore_index=True)


def cases_text(pred: pd.DataFrame, cases: pd.DataFrame, split: str) -> str:
    """Markdown: how many of the predicted images the model gets right, and what
    :func:`pick_cases` drew (a grade-balanced sample's accuracy is not the split's)."""
    right = int((pred.grade == pred.pred).sum())
    per = pred.grade.value_counts()
    balanced = len(per) == 5 and per.nunique() == 1
    n_wrong = int((cases.case == "misclassified").sum())
    return (f"The model is right on {right} of the {len(pred)} {split} knees predicted here "
            f"({100 * right / max(len(pred), 1):.0f} %"
            + (f"; a grade-balanced sample, {per.iloc[0]} per grade, so this is not the "
               f"accuracy on the whole split" if balanced else "")
            + f"). Drawn below: {len(cases) - n_wrong} correct and {n_wrong} misclassified "
            "case(s)" + (
                "; the misclassified ones have output entropies "
                + ", ".join(f"{e:.2f}" for e in cases[cases.case == "misclassified"].entropy)
                + f" (a uniform output over five grades has {np.log(5):.2f})"
                if n_wrong else "") + ".")


OTHER_CLASSES = {"top2": "top2", "top5": "top5", "true": "grade"}  # other -> column


def _scale(cam: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    """pytorch-grad-cam's ``scale_cam_image`` for one map: min-max to [0, 1], then resize."""
    cam = cam - cam.min()
    cam = cam / (1e-7 + cam.max())
    return np.float32(cv2.resize(np.float32(cam), size) if size else cam)


def stream_cams(model, views: np.ndarray, targets: list[dict[str, int]]
                ) -> list[dict[tuple[str, str], np.ndarray]]:
    """Grad-CAM of every stream the model uses, for several target classes per image, from
    ONE forward pass over all images (``views``: (N, 2, H, W) uint8; ``targets``: per image,
    name -> class, the same names for every image). Returns per image {(stream, name): map}.

    The maps are those of :func:`koa_core.infer.explain.grad_cam` (pytorch-grad-cam's GradCAM:
    ReLU of the activations weighted by their spatially averaged gradients, scaled to
    [0, 1] and resized to the image), but the gradients are taken only down to each
    stream's hook, not through the trunk, and the images are independent in eval mode, so
    one pass serves every map: several times faster on a CPU."""
    import torch

    layers = stream_layers(model)
    acts: dict[str, torch.Tensor] = {}
    hooks = [layer.register_forward_hook(lambda _m, _i, o, s=s: acts.__setitem__(s, o))
             for s, layer in layers.items()]
    model.eval()
    try:
        device = next(model.parameters()).device
        x = torch.as_tensor(np.asarray(views)).float().div(255.0).to(device)
        with torch.enable_grad():
            logits = model(x)["logits"]
            grads = {name: torch.autograd.grad(
                sum(logits[i, int(t[name])] for i, t in enumerate(targets)),
                [acts[s] for s in layers], retain_graph=True) for name in targets[0]}
    finally:
        for h in hooks:
            h.remove()
    size = (x.shape[-1], x.shape[-2])  # (width, height), as cv2.resize takes it
    out = []
    for i in range(len(targets)):
        maps = {}
        for s_idx, stream in enumerate(layers):
            a = acts[stream][i].detach().cpu().numpy()
            for name in targets[i]:
                g = grads[name][s_idx][i].cpu().numpy()
                cam = np.maximum((g.mean(axis=(1, 2))[:, None, None] * a).sum(axis=0), 0)
                maps[(stream, name)] = _scale(_scale(cam, size))  # as the library: twice
        out.append(maps)
    return out


def cam_cases(checkpoint: str | Path, cases: pd.DataFrame, other: str = "top5") -> list[dict]:
    """Grad-CAM maps of both streams for the top-1 class and for ``other`` per case:
    ``"top5"`` (the least likely of the five classes, as in the paper's Fig. 7),
    ``"top2"`` (the runner-up) or ``"true"`` (the true grade). Cases come from
    :func:`pick_cases`; the maps come from one forward pass (:func:`stream_cams`)."""
    if other not in OTHER_CLASSES:
        raise ValueError(f"other must be one of {', '.join(OTHER_CLASSES)} (got {other!r})")
    if not len(cases):
        return []
    model, side = load_checkpoint(checkpoint)
    pre = Preprocessor.from_sidecar(side)
    views = np.stack([np.stack(pre.load(p)) for p in cases.path])
    targets = [{"top-1": int(c.top1), other: int(c[OTHER_CLASSES[other]])}
               for _, c in cases.iterrows()]
    maps = stream_cams(model, views, targets)
    return [{"case": c, "views": v, "targets": t, "maps": m}
            for (_, c), v, t, m in zip(cases.iterrows(), views, targets, maps)]


def _joint_focus(cam: np.ndarray) -> float:
    """Share of the map's mass in the central joint band over the band's share of the area:
    1 for a uniform map, above 1 when the map concentrates on the joint space, NaN for an
    empty map (Grad-CAM keeps only positive evidence, and there may be none)."""
    if cam.sum() <= 0:
        return float("nan")  # an empty map: no positive evidence for the class
    rows, cols = joint_box(cam)
    band = cam[rows, cols]
    return float(band.sum() / cam.sum() / (band.size / cam.size))


def cam_figure(results: list[dict]):
    """One row per case: the raw view, then each stream's Grad-CAM for each target class;
    titles give the class and the map's joint focus (1 = uniform, above 1 = on the joint)."""
    import matplotlib.pyplot as plt

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


def cam_conflict_text(results: list[dict], other: str = "top5") -> str:
    """Markdown: for the misclassified cases of :func:`cam_cases`, per stream, in how many
    the top-1 map sits more on the joint band than the ``other`` map (the paper's "feature
    conflict": top-1 on the joint space, the other class on the margins)."""
    wrong = [r for r in results if r["case"].case == "misclassified"]
    if not wrong:
        return "No misclassified case was drawn, so the feature conflict is not tested here."
    parts = []
    for stream in dict.fromkeys(s for s, _ in wrong[0]["maps"]):
        pairs = [(_joint_focus(r["maps"][(stream, "top-1")]),
                  _joint_focus(r["maps"][(stream, other)])) for r in wrong]
        valid = [(a, b) for a, b in pairs if not (np.isnan(a) or np.isnan(b))]
        more = sum(a > b for a, b in valid)
        parts.append(f"{more} of {len(valid)} case(s) in the {stream} stream"
                     + (f" ({len(pairs) - len(valid)} with an empty map left out)"
                        if len(valid) < len(pairs) else ""))
    label = {"top5": "top-5", "top2": "top-2", "true": "true-grade"}.get(other, other)
    return (f"Of the {len(wrong)} misclassified case(s), the top-1 map is more concentrated "
            f"on the joint band than the {label} map in " + " and ".join(parts) + ". The "
            "paper's \"feature conflict\" (top-1 on the joint space, the other class on the "
            "margins) would have it so in every such case; with this few cases the count "
            "illustrates, it does not test.")


def checkpoint_note(checkpoint: str | Path, split: str = "val") -> str:
    """Markdown: the caveats of explaining a checkpoint, from its sidecar: how it was
    selected (a validation metric: knees of the validation split helped choose it), on what
    data it was trained, whether from scratch, and where."""
    side = read_sidecar(checkpoint)
    m, data = side.get("val_metrics") or {}, side.get("data") or {}
    pretrained = ((side.get("config") or {}).get("model") or {}).get("pretrained")
    parts = []
    if side.get("select_metric") and m:
        parts.append(f"was selected by validation {side['select_metric']} (epoch "
                     f"{side.get('epoch', '?')}, on {m.get('n', '?')} validation knees)"
                     + (f", so the {split} knees explained here were not trained on but did "
                        "take part in choosing it" if split == "val" else ""))
    if data.get("root") and not str(data["root"]).startswith("/"):
        parts.append(f"has its data recorded in its sidecar as \"{data['root']}\"")
    if pretrained == "none":
        parts.append("was trained from scratch (no ImageNet initialisation)")
    pre = side.get("preprocess") or (side.get("config") or {}).get("preprocess") or {}
    if pre.get("input_clahe_clip"):
        parts.append(f"was trained on CLAHE-enhanced crops, so it applies CLAHE at clip "
                     f"{pre['input_clahe_clip']:g} ({pre.get('input_clahe_tiles', 8)} x "
                     f"{pre.get('input_clahe_tiles', 8)} tiles) to every image it grades "
                     "before the paper's steps (its sidecar's `input_clahe_clip`): the maps "
                     "below are drawn on that enhanced view of each original knee")
    if side.get("hardware"):
        parts.append(f"ran on {side['hardware']}")
    if not parts:
        return ""
    return "**About the checkpoint.** It " + "; it ".join(parts) + "."

