"""What the book sets beside the paper's figures but is not one of them: the display names
of Table 5's rows and published results of other groups on the same public dataset. The
paper's printed figures themselves (Tables 1-5 and 7, Fig. 1) live in :mod:`koa_core.paper`.
"""

from __future__ import annotations

from koa_core import paper

KL = list(paper.KL)


# Table 5: (configuration, bundled config, test accuracy %), the accuracy read from
# koa_core.paper.TABLE5 (keyed by configuration: clahe, raw, dual-noattn, proposed).
ABLATIONS = [(name, f"ablation-{key}", paper.TABLE5[key]) for name, key in (
    ("Single-stream (CLAHE only)", "clahe"), ("Single-stream (Raw only)", "raw"),
    ("Dual-stream (Raw + CLAHE, no attention)", "dual-noattn"),
    ("Proposed (dual-stream + attention)", "proposed"))]


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
