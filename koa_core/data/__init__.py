"""Data: from files on disk to the two 8-bit views the model reads (paper §2.1-2.2).

The dataset index and its splits (:mod:`.index`), the one reader front door
(:mod:`.imaging`) over the raster and DICOM readers, the paper's preprocessing
(:mod:`.preprocess`), the view cache, the synthetic phantom, the dataset health check and
the input check.

Rule (tests/test_layout.py):
Imports: koa_core, errors, config, files, paper.
"""
