"""koa_core: dual-stream ResNet-18 with cross-attention for knee osteoarthritis KL grading.

A reproducible implementation of Huong et al., "Dual-stream ResNet-18 with Cross-Attention
for Enhanced Knee Osteoarthritis Classification from X-ray Images".
"""

import os

# albumentations looks for a newer release on PyPI at import time unless told not to;
# importing koa_core must never touch the network.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"

GRADES = (0, 1, 2, 3, 4)
GRADE_NAMES = ("KL0 healthy", "KL1 doubtful", "KL2 minimal", "KL3 moderate", "KL4 severe")

__all__ = ["GRADES", "GRADE_NAMES", "__version__"]
