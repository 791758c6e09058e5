"""The paper's numbers, copied as printed (slips included): Tables 1, 3, 4, 5 and 7, the
class totals of Fig. 1, and published results on the same public dataset.
"""

from __future__ import annotations

from koa_core.experiments.ablation import PAPER_TABLE5 as _TABLE5_BY_CONFIG
from koa_core.experiments.paper import PAPER_TABLE3, PAPER_TABLE4  # noqa: F401 (re-exported)

KL = [f"KL{g}" for g in range(5)]


PAPER_FIG1_COUNTS = (3857, 1770, 2578, 1786, 295)  # Fig. 1 (sums to 10,286)


PAPER_TABLE1 = {"train": (2286, 1046, 1516, 757, 173), "val": (328, 153, 212, 106, 27),
                "test": (639, 296, 447, 223, 51)}  # Table 1 (5,778 / 826 / 1,656)


# Table 5: (configuration, bundled config, test accuracy %).
# Table 5's accuracies live once, in koa_core.experiments.ablation (which computes our Table 5).
ABLATIONS = [(name, f"ablation-{key}", _TABLE5_BY_CONFIG[key]) for name, key in (
    ("Single-stream (CLAHE only)", "clahe"), ("Single-stream (Raw only)", "raw"),
    ("Dual-stream (Raw + CLAHE, no attention)", "dual-noattn"),
    ("Proposed (dual-stream + attention)", "proposed"))]


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
