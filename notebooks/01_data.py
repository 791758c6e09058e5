# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Data: knee radiographs and their grades
#
# The paper trains on the public *Knee Osteoarthritis Severity Grading* dataset (Chen 2018):
# 224 x 224 crops of knee radiographs from the Osteoarthritis Initiative, each labelled with its
# Kellgren-Lawrence (KL) grade, in an official train / validation / test split (paper §2.1,
# Fig. 1, Table 1). This chapter counts what the data root holds and checks that it is safe to
# train on.

# %% [markdown]
# ## Overview
#
# 1. Count the images per split and grade, beside the paper's Table 1 and the totals of its
#    Fig. 1, and list where the paper's own counts disagree.
# 2. Measure the class imbalance that the loss of [chapter 3](03_loss.ipynb) has to handle.
# 3. Look at a few images of every grade (the paper's Fig. 1 shows such samples).
# 4. Check patients and files: no patient's knees in two splits, no file copied across splits,
#    no unreadable image.
#
# ## Prerequisites
#
# | Concepts | Importance | Notes |
# | --- | --- | --- |
# | Kellgren-Lawrence grades 0-4 | Necessary | KL0 healthy, KL1 doubtful, KL2 minimal, KL3 moderate, KL4 severe |
# | Train / validation / test splits | Necessary | the checkpoint is chosen on validation, test is read once |
# | pandas DataFrames | Helpful | every table below is one |
#
# - **Time to learn**: 10 minutes

# %% [markdown]
# ## Imports

# %%
from koa_core import report
from koa_core.data import discover
from koa_core.datacheck import scan
from koa_core.metrics import majority_rate

# %% [markdown]
# ## Parameters
#
# `data_root` is a dataset root in the public layout `ROOT/{train,val,test}/{0..4}/*.png`.
# Left empty, a small synthetic phantom is written under `runs_dir` and used instead.

# %% tags=["parameters"]
data_root = ""  # dataset root (empty: the synthetic phantom)
runs_dir = "runs/book"  # the book's runs (and, if needed, the phantom)
seed = 0

# %%
report.setup(seed)
root = report.resolve_root(data_root, runs_dir)
index = discover(root)
scanned = scan(index)
report.parameter_table(data_root=root, runs_dir=runs_dir, seed=seed)

# %% [markdown]
# ## Images per split and grade
#
# Our counts first, then the paper's Table 1 in the same layout, with the per-grade totals that
# the paper prints in Fig. 1 (the figure's sample images are not reproduced here; its numbers
# are). `share %` is the grade's share of all images; `KL0 : KLk` says how many KL0 images
# there are for each image of grade k.

# %%
ours = report.counts_table(index)
ours

# %%
paper = report.paper_counts_table()
paper

# %% [markdown]
# The paper's counts do not agree with each other everywhere. Table 1 (the split counts, 8,260
# images) matches the public data; the other numbers are slips, noted here and not copied.

# %%
report.paper_count_slips()

# %%
fig = report.share_figure(ours, paper, label=f"ours ({root.name})")

# %% [markdown]
# ## Class imbalance
#
# KL0 alone is about two images in five, KL4 about three in a hundred. A model that always
# answers KL0 is right that often, so accuracy has to be read against this *majority rate*,
# and per-grade recall (KL4 above all) matters more than the headline number.

# %%
for split in ("val", "test"):
    grades = [r.grade for r in index.split(split)]
    rate = f"{majority_rate(grades):.3f}" if grades else "n/a (no such split here)"
    print(f"majority rate on the {split} split: {rate}")
print(f"paper's Table 1: val {328 / 826:.3f}, test {639 / 1656:.3f}")
ratio = ours.loc["KL0", "total"] / ours.loc["KL4", "total"]
print(f"KL0 : KL4 images: {ratio:.1f} (paper's Table 1: {3253 / 251:.1f})")

# %% [markdown]
# ## A few images of every grade
#
# One row per grade from the training split. On real radiographs the grades differ by
# joint-space narrowing, osteophytes, sclerosis and deformity of the bone ends; on the phantom
# these signs are drawn with grade-dependent, overlapping magnitudes.

# %%
fig = report.sample_grid(index, per_grade=5, seed=seed)

# %% [markdown]
# ## Patients and leakage
#
# File names such as `9001695L` carry a patient id and the knee side. Both knees of a patient
# must sit in the same split: otherwise the model is tested on the twin of a knee it was
# trained on. `koa_core.datacheck.scan` decodes every file once and reports the facts below
# (`koa data check ROOT` prints the same). Other known pitfalls of this dataset: the
# `auto_test/` folder of some downloads holds re-detected crops of the *test* knees (the
# loader skips it), `kneeKL224` and `kneeKL299` are the same images at two sizes (never merge
# them), and augmenting or oversampling before splitting leaks copies into the test split.

# %%
report.leakage_table(scanned)

# %%
for warning in index.warnings:
    print("warning:", warning)
print(f"{len(index.warnings)} warning(s); usable: {scanned.usable()}")

# %% [markdown]
# ## Summary
#
# The data root was counted per split and grade and set beside the paper's Table 1; the
# paper's own slips (9,786 vs 8,260 images; KL3 at 1,786 / 1,286 / 1,086; 447 vs 448 test
# KL2 images) are listed rather than copied. The grades are strongly imbalanced, so accuracy
# is read against the majority rate. No patient appears in two splits, no file is duplicated
# across splits and every image decodes, or the table above says which check failed.
#
# ### What's next
#
# [Preprocessing](02_preprocessing.ipynb) crops the joint and makes the CLAHE view that the
# second stream of the model sees, and tests the paper's choice of the CLAHE clip limit.
#
# ## References
#
# - P. Chen, *Knee osteoarthritis severity grading dataset*, Mendeley Data, v1, 2018,
#   doi:10.17632/56rmx5bjcr.1 (CC BY 4.0).
# - P. T. V. Huong et al., *Dual-stream ResNet-18 with Cross-Attention for Enhanced Knee
#   Osteoarthritis Classification from X-ray Images*, §2.1, Fig. 1, Table 1.
# - J. H. Kellgren and J. S. Lawrence, Radiological assessment of osteo-arthrosis,
#   *Ann Rheum Dis* 16(4):494-502, 1957.
