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
# Fig. 1, Table 1). This chapter counts what the data holds and checks that it is safe to
# train on. In the published profile the counts and checks are those of the full real copy
# (from its `koa data stats` summary) and the images shown are a committed sample of real
# validation knees, the original crops of the public dataset; in the demo profile both come
# from the synthetic phantom.

# %% [markdown]
# ## Overview
#
# 1. Count the images per split and grade, beside the paper's Table 1 and the totals of its
#    Fig. 1, and list where the paper's own counts disagree.
# 2. Measure the class imbalance that the loss of [chapter 3](03_loss.ipynb) has to handle.
# 3. Look at a few images of every grade (the paper's Fig. 1 shows such samples), and say
#    which knees they are.
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
from IPython.display import Markdown, display

from koa_core.report import common, data
from koa_core.data.index import discover
from koa_core.data.check import scan

# %% [markdown]
# ## Parameters
#
# `data_root` is a dataset root in the public layout `ROOT/{train,val,test}/{0..4}/*.png`.
# Left empty, a small synthetic phantom is written under `runs_dir` and used instead.
# `stats_json` is the output of `koa data stats ROOT --json` on a full copy of the data:
# when given, the counts and checks come from it instead of from `data_root`.
# `sample_root` is a small committed sample of real knees for the image grid (the published
# profile's `book/sample`); empty, the grid draws from `data_root`.

# %% tags=["parameters"]
data_root = ""  # dataset root (empty: the synthetic phantom)
runs_dir = "runs/book"  # the book's runs (and, if needed, the phantom)
stats_json = ""  # koa data stats --json of the full copy (empty: count data_root)
sample_root = ""  # committed sample of real knees for the grid (empty: data_root)
seed = 0

# %%
common.setup(seed)
root = common.resolve_root(data_root, runs_dir)
index = discover(root)
stats = data.load_stats(stats_json)  # None without a stats file
counted = stats or index  # what the counts and checks are taken from
checked = stats or scan(index)
shown = discover(sample_root) if sample_root else index  # what the grid draws from
common.parameter_table(data_root=root, runs_dir=runs_dir, stats_json=stats_json,
                       sample_root=sample_root, seed=seed)

# %%
Markdown(data.stats_provenance(stats) if stats else
         f"Counts and checks below are computed from the data root `{root.name}`.")

# %% [markdown]
# ## Images per split and grade
#
# Our counts first, then the paper's Table 1 in the same layout, with the per-grade totals that
# the paper prints in Fig. 1 (the figure's sample images are not reproduced here; its numbers
# are). `share %` is the grade's share of all images; `KL0 : KLk` says how many KL0 images
# there are for each image of grade k. A split our data lacks has no column.

# %%
ours = data.counts_table(counted)
ours

# %%
paper = data.paper_counts_table()
paper

# %%
Markdown(data.counts_match_text(ours, paper))

# %% [markdown]
# The paper's counts do not agree with each other everywhere. Table 1 (the split counts, 8,260
# images) matches the public data; the other numbers are slips, noted here and not copied.

# %%
data.paper_count_slips()

# %%
fig = data.share_figure(ours, paper, label=f"ours ({data.source_name(counted)})")

# %% [markdown]
# ## Class imbalance
#
# The *majority rate* is what a model that always answers the most frequent grade (KL0)
# scores: accuracy has to be read against it. A split the data lacks reads n/a ("held out"
# for a full copy made without its test split).

# %%
majority = data.majority_table(counted)
majority

# %%
Markdown(data.imbalance_text(ours, paper, majority))

# %% [markdown]
# ## A few images of every grade
#
# One row per grade, drawn at random from the first split that holds images: the training
# split of a full data root, or the validation knees of the committed sample in the published
# profile. On real radiographs the grades differ by joint-space narrowing, osteophytes,
# sclerosis and deformity of the bone ends; on the phantom these signs are drawn with
# grade-dependent, overlapping magnitudes.

# %%
fig = data.sample_grid(shown, per_grade=5, seed=seed)

# %% [markdown]
# With a committed sample (the published profile), the caveats that come with it and the knees
# it holds, per grade (a file name is the OAI patient id and the knee's side):

# %%
if sample_root:
    display(Markdown(data.sample_note(shown)), data.sample_table(shown))

# %% [markdown]
# ## Patients and leakage
#
# File names such as `9001695L` carry a patient id and the knee side. Both knees of a patient
# must sit in the same split: otherwise the model is tested on the twin of a knee it was
# trained on. `koa_core.data.check.scan` decodes every file once and reports the facts below
# (`koa data check ROOT` prints the same; with a stats file, they are those `koa data stats`
# found on the full copy). Other known pitfalls of this dataset: the
# `auto_test/` folder of some downloads holds re-detected crops of the *test* knees (the
# loader skips it), `kneeKL224` and `kneeKL299` are the same images at two sizes (never merge
# them), and augmenting or oversampling before splitting leaks copies into the test split.

# %%
checks = data.leakage_table(checked)
checks

# %%
warnings = stats["warnings"] if stats else index.warnings
for warning in warnings:
    print("warning:", warning)
Markdown(data.leakage_verdict(checks, warnings))

# %% [markdown]
# ## Summary
#
# The data (the full copy's summary in the published profile, the data root otherwise) was
# counted per split and grade and set beside the paper's Table 1, with a computed statement
# of where the two agree; the paper's own slips (9,786 vs 8,260 images; KL3 at 1,786 /
# 1,286 / 1,086; 447 vs 448 test KL2 images) are listed rather than copied. The imbalance
# and the majority rate that accuracy is read against were computed, a grid of knees per
# grade was drawn (from the committed sample of validation knees, named above, in the
# published profile), and the patient, duplicate and decoding checks were stated from the
# data. The sample's caveats (its size and split) are stated beside it.
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
