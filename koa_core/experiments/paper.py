"""The paper's figures that the scorecard judges (§3, Tables 3-4), copied as printed.

Table 5 lives with our Table 5 (:data:`koa_core.experiments.ablation.PAPER_TABLE5`); the
book's other tables of the paper (1, 7, Fig. 1) in :mod:`koa_core.report.paper`.
"""

from __future__ import annotations

__all__ = ["PAPER_KL3_OFF", "PAPER_TABLE3", "PAPER_TABLE4"]

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


# §3.1b: "Class 3 remained difficult to identify accurately, with over 40% of samples
# misclassified as Class 2 or Class 4" (proposed model, test split).
PAPER_KL3_OFF = 0.40
