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
# # Grad-CAM: where each stream looks
#
# The paper's Fig. 7 uses Grad-CAM to study misclassified boundary cases: their output
# probabilities were nearly uniform, and the heat maps for the top-1 class (KL0 in its
# example) sat on the central joint space while those for the top-5 class, the least likely of
# the five (KL3 in its example), moved to the peripheral margins (where osteophytes grow), a
# "feature conflict" the paper blames for the errors. This chapter draws the same kind of
# figure for both streams of the model, for correct and misclassified images: in the published
# profile, of the shipped checkpoint (nothing trains here) on the committed
# sample of real validation knees; in the demo profile, of the book's proposed run on the
# phantom's test split.

# %% [markdown]
# ## Overview
#
# 1. Predict the test split (or, where the data hold no test split, the validation knees) and
#    pick confident correct cases and uncertain misclassified ones.
# 2. Compute Grad-CAM of the raw and the CLAHE stream for the top-1 class and for the top-5
#    class (the least likely), as the paper's Fig. 7 does.
# 3. For the misclassified cases, compare the top-1 class with the true class.
# 4. Measure how much of each map falls on the central joint band.
#
# ## Prerequisites
#
# | Concepts | Importance | Notes |
# | --- | --- | --- |
# | [Evaluation](06_evaluation.ipynb) | Necessary | the model and its errors |
# | Grad-CAM (Selvaraju et al. 2017) | Helpful | class-specific heat maps from gradients of the last feature map |
#
# - **Time to learn**: 10 minutes

# %% [markdown]
# ## Imports

# %%
from pathlib import Path

from IPython.display import Markdown, display

from koa_core.report import cams, common, data, predictions, training
from koa_core.data.index import discover

# %% [markdown]
# ## Parameters

# %% tags=["parameters"]
data_root = ""  # dataset root (empty: the synthetic phantom)
runs_dir = "runs/book"
train_profile = ["demo"]
train_sets = []
checkpoint = ""  # a .safetensors checkpoint (empty: the book's proposed run)
sample_root = ""  # committed sample of real knees (empty: use data_root)
seed = 0
threads = 0
n_correct = 2  # confident correct cases (of distinct grades)
n_wrong = 3  # most uncertain misclassified cases

# %%
common.setup(seed, threads)
root = common.resolve_root(data_root, runs_dir)
ckpt = training.proposed_checkpoint(checkpoint, runs_dir, train_profile,
                                  train_sets, root)
knees = Path(sample_root or root)  # the images explained
split = data.first_split(discover(knees), prefer=("test", "val"))
common.parameter_table(data_root=root, sample_root=sample_root, split=split, checkpoint=ckpt,
                       n_correct=n_correct, n_wrong=n_wrong)

# %%
if sample_root:
    display(Markdown(data.sample_note(discover(knees))))
if checkpoint:
    display(Markdown(cams.checkpoint_note(ckpt, split)))

# %% [markdown]
# ## The cases
#
# Correct cases: the most confident correct prediction of each of `n_correct` grades.
# Misclassified cases: the `n_wrong` errors with the highest entropy of the predicted
# probabilities, the "nearly uniform" outputs the paper describes.

# %%
pred = predictions.predict_split(ckpt, knees, split)
cases = cams.pick_cases(pred, n_correct, n_wrong)
cases.assign(image=[Path(p).name for p in cases.path])[
    ["case", "image", "grade", "pred", "top2", "top5", "confidence", "entropy",
     "p0", "p1", "p2", "p3", "p4"]].round(3)

# %%
Markdown(cams.cases_text(pred, cases, split))

# %% [markdown]
# ## Top-1 against top-5, both streams (as in Fig. 7)
#
# Each row: the raw view, then Grad-CAM of the raw stream and of the CLAHE stream for the
# top-1 class and for the top-5 class, the least likely of the five (the paper's Fig. 7
# contrasts these two). Both streams share the ResNet-18 weights, but each has its own hook
# on the trunk output, so the maps differ.
#
# Neither map is a pure single-stream attribution. The hooks sit on the trunk outputs,
# *before* the bidirectional cross-attention, and the gradient reaches each hook along two
# paths: through its own stream's tokens (the attention's queries and residual) and through
# the other stream's attention, whose keys and values it supplies. So the raw-stream map also
# carries gradient through the CLAHE stream's cross-attention keys and values, and the CLAHE
# map through the raw stream's.
#
# The titles give each map's *joint focus*: its share of mass inside the central joint band
# (the middle 30 % of rows and 70 % of columns) divided by the band's share of the image, so 1
# is a uniform map and values above 1 mean the map sits on the joint space. Grad-CAM keeps only evidence *for* a class; a stream
# with none for it gives an empty map (marked so, and NaN in the tables below).

# %%
top5 = cams.cam_cases(ckpt, cases, other="top5")
fig = cams.cam_figure(top5)

# %% [markdown]
# ## Top-1 against the true grade, misclassified cases
#
# For an error, the interesting alternative is the grade the model should have given.

# %%
wrong = cases[cases.case == "misclassified"]
true_maps = cams.cam_cases(ckpt, wrong, other="true") if len(wrong) else []
fig = cams.cam_figure(true_maps) if true_maps else None

# %% [markdown]
# ## Where the maps fall
#
# The joint focus of every map above, top-1 against top-5 first, then top-1 against the true
# grade. The paper's "feature conflict" would show as a high focus for the top-1 class and a
# low one (attention on the margins) for the competing class.

# %%
cams.cam_share_table(top5)

# %%
Markdown(cams.cam_conflict_text(top5, other="top5"))

# %%
cams.cam_share_table(true_maps) if true_maps else None

# %% [markdown]
# ## Summary
#
# Grad-CAM maps of both streams were drawn for confident correct and uncertain misclassified
# knees (the committed real validation sample with the shipped checkpoint in the published
# profile, the phantom's test split with the book's run in the demo), for the top-1 class
# against the top-5 class (as in the paper's Fig. 7) and against the true grade, and the joint
# focus of each map was measured; the computed sentence above says how often the paper's
# "feature conflict" shows. Each stream's map also carries gradient through the other
# stream's cross-attention, so neither is a pure single-stream attribution. At the demo
# profile's 64 pixels the last feature map is 2 x 2, so the maps are coarse; at 224 pixels
# (the paper profile and the shipped checkpoint) it is 7 x 7, as in the paper.
#
# ### What's next
#
# Back to the [introduction](../intro.md) for how to rerun any chapter on your own data, or to
# [Evaluation](06_evaluation.ipynb) for the numbers behind these cases.
#
# ## References
#
# - P. T. V. Huong et al., *Dual-stream ResNet-18 with Cross-Attention ...*, §3.1, Fig. 7.
# - R. R. Selvaraju et al., Grad-CAM: visual explanations from deep networks via
#   gradient-based localization, *ICCV* 2017, arXiv:1610.02391.
# - J. Gildenblat and contributors, *pytorch-grad-cam*, 2021.
