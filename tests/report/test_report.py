"""Tests for koa_core.report: the book's tables, figures and run helpers, on tiny inputs."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402

from koa_core.config import config_to_dict, load_config  # noqa: E402
from koa_core.data.index import discover  # noqa: E402
from koa_core.data.phantom import render_knee  # noqa: E402
from koa_core.errors import KoaError  # noqa: E402
from koa_core.paper import (  # noqa: E402
    ALPHA,
    TABLE1,
    TABLE2_COUNTS,
    TABLE2_SHARES_PCT,
    TABLE3,
    TABLE4,
    TABLE5,
    TABLE7,
)
from koa_core.report import cams, clahe, common, data, evaluation, loss, predictions, training
from koa_core.report.paper import ABLATIONS, KL, PUBLISHED


@pytest.fixture(autouse=True)
def _close_figures():
    import matplotlib.pyplot as plt

    yield
    plt.close("all")


@pytest.fixture(scope="module")
def knees() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [render_knee(g, rng, 224) for g in (0, 2, 4)]  # CLAHE clips differ at 224 px


@pytest.fixture(scope="module")
def index(phantom_root):
    return discover(phantom_root)


def _is_figure(fig) -> bool:
    from matplotlib.figure import Figure

    return isinstance(fig, Figure) and len(fig.axes) > 0


# ---------------------------------------------------------------- paper constants
def test_paper_tables_are_self_consistent():
    t1 = data.paper_counts_table()
    assert t1.loc["total", ["train", "val", "test", "total"]].tolist() == [5778, 826, 1656, 8260]
    assert t1.loc["total", "Fig. 1 total"] == 10286
    assert [t1.loc[f"KL{g}", "total"] for g in range(5)] == [3253, 1495, 2175, 1086, 251]
    assert abs(t1["share %"].iloc[:5].sum() - 100) < 0.05


@pytest.mark.parametrize("table, acc, n", [(3, 0.6510, 1656), (4, 0.7206, 1657)])
def test_paper_report_tables(table, acc, n):
    df = evaluation.paper_report_table(table)
    assert list(df.index) == KL + ["accuracy", "macro avg", "weighted avg"]
    assert df.loc["accuracy", "f1-score"] == acc and df.loc["accuracy", "support"] == n
    correct = evaluation.paper_correct_counts(table)
    assert correct.loc["KL4", "correct"] == (40 if table == 4 else 41)
    assert (correct["correct"] <= correct["support"]).all()


def test_paper_count_slips_and_table5():
    slips = data.paper_count_slips()
    assert {"1,786", "1,286", "1,086"} <= set(slips["paper says"])
    # the conclusion's "Weighted F1" 0.6127 -> 0.6712 are Tables 3-4's macro F1 values
    assert {"9,786", "448 (KL2) / 1,657", "sum to 94.0 %"} <= set(slips["paper says"])
    assert "agrees with Table 2's 13.14 % of 9,786" in set(slips["but"])
    assert "Table 3 and Table 1: 447 / 1,656" in set(slips["but"])
    (row,) = slips[slips["quantity"].str.startswith("Weighted F1")].itertuples()
    assert row.quantity == "Weighted F1 0.6127 -> 0.6712"
    assert TABLE3["macro"][2] == 0.6127 and TABLE4["macro"][2] == 0.6712
    assert f"{TABLE3['weighted'][2]:.4f}" in row.but
    assert [a for _, _, a in ABLATIONS] == [61.84, 65.10, 70.47, 72.06]
    assert [c for _, c, _ in ABLATIONS] == [f"ablation-{c}" for c in TABLE5]
    assert TABLE5["proposed"] == 72.06


# ---------------------------------------------------------------- setup and data
def test_setup_seeds_and_keeps_threads():
    import torch

    threads = torch.get_num_threads()
    common.setup(seed=3)
    a = np.random.rand()
    common.setup(seed=3)
    assert np.random.rand() == a
    assert torch.get_num_threads() == threads


def test_ensure_phantom_writes_once(tmp_path):
    root = common.ensure_phantom(tmp_path / "ph", per_class=3, seed=0, size=64)
    assert (root / ".complete").exists()
    n = len(discover(root).records)
    stamp = (root / ".complete").stat().st_mtime_ns
    assert common.ensure_phantom(tmp_path / "ph", per_class=3, seed=0, size=64) == root
    assert (root / ".complete").stat().st_mtime_ns == stamp and n == 15


def test_parameter_table_shows_folder_names_only(tmp_path):
    ckpt = tmp_path / "runs" / "proposed" / "best.safetensors"
    t = common.parameter_table(data_root=tmp_path / "kl", runs_dir="", checkpoint=str(ckpt),
                               seed=1, sets=["train.epochs=3"])
    assert t.loc["data_root", "value"] == "kl"
    assert t.loc["runs_dir", "value"] == "(empty)"
    assert t.loc["checkpoint", "value"] == "proposed/best.safetensors"
    assert t.loc["seed", "value"] == "1" and "train.epochs=3" in t.loc["sets", "value"]
    assert str(tmp_path) not in t.to_string()


def test_resolve_root(tmp_path):
    assert common.resolve_root(tmp_path / "kl", "unused") == tmp_path / "kl"
    # empty: a phantom under runs_dir (written once, reused afterwards)
    (tmp_path / "runs" / "phantom").mkdir(parents=True)
    (tmp_path / "runs" / "phantom" / ".complete").write_text("ok\n")
    assert common.resolve_root("", tmp_path / "runs") == tmp_path / "runs" / "phantom"


def test_proposed_checkpoint(tmp_path, monkeypatch):
    assert training.proposed_checkpoint("x/best.safetensors", tmp_path, ["demo"]) == \
        Path("x/best.safetensors")
    monkeypatch.setattr(training, "proposed_run", lambda runs, p, s, root: runs / "proposed")
    assert training.proposed_checkpoint("", tmp_path, ["demo"]) == \
        tmp_path / "proposed" / "best.safetensors"


def test_counts_table(index):
    t = data.counts_table(index)
    assert list(t.index) == KL + ["total"]
    assert t.loc["total", "total"] == len(index.records) == 60
    assert t.loc["KL0", "KL0 : KLk"] == 1.0
    assert abs(t["share %"].iloc[:5].sum() - 100) < 0.05


def test_share_figure_and_sample_grid(index):
    ours = data.counts_table(index)
    assert _is_figure(data.share_figure(ours, data.paper_counts_table()))
    fig = data.sample_grid(index, per_grade=2, seed=0)
    assert len(fig.axes) == 10 and fig.axes[0].get_ylabel().startswith("KL0")


def test_leakage_table(index):
    from koa_core.data.check import scan

    t = data.leakage_table(scan(index, workers=2))
    assert t.loc["patients in more than one split", "value"] == 0
    assert t.loc["usable for training", "value"] == "yes"


# ---------------------------------------------------------------- preprocessing
def test_crop_example(knees):
    fig = data.crop_example(knees[0], pad=10)
    assert len(fig.axes) == 2 and "224x224" in fig.axes[1].get_title()


def test_sample_images(index):
    imgs, grades = data.sample_images(index, n=10, seed=0)
    assert len(imgs) == len(grades) and 5 <= len(imgs) <= 12
    assert set(grades) == set(range(5)) and imgs[0].dtype == np.uint8


def test_clahe_measures_grow_with_clip(knees):
    img = knees[1]
    m = [clahe.clahe_measures(img, c) for c in (None, 1.0, 3.0)]
    assert set(m[0]) == {"rms_contrast", "joint_edge", "flat_noise"}
    assert m[2]["joint_edge"] > m[1]["joint_edge"]
    assert m[2]["flat_noise"] > m[1]["flat_noise"]


def test_clahe_table_and_verdict(knees):
    t = clahe.clahe_table(knees, clips=(1.0, 2.0, 3.0))
    assert list(t.index) == ["raw", "1", "2", "3"]
    assert t.loc["raw", "joint_edge gain"] == pytest.approx(1.0)
    text = clahe.clahe_verdict(t)
    assert "clip" in text and text.endswith(".")
    best = str(t.drop(index="raw")["edge/noise"].idxmax())
    assert f"highest at clip {best}" in text


def test_joint_focus_is_one_for_a_uniform_map():
    assert cams._joint_focus(np.ones((64, 64))) == pytest.approx(1.0, abs=0.02)
    peak = np.zeros((64, 64))
    peak[32, 32] = 1
    assert cams._joint_focus(peak) > 3
    assert np.isnan(cams._joint_focus(np.zeros((8, 8))))


@pytest.mark.parametrize("best, supports", [("2", True), ("1", False)])
def test_clahe_verdict_wording(best, supports):
    ratios = {"1": [1.2, 1.1, 1.0], "2": [1.0, 1.2, 1.1]}[best]
    t = pd.DataFrame({"joint_edge gain": [1, 1.2, 1.5, 1.8], "flat_noise gain": [1, 1.1, 1.3, 1.7]},
                     index=["raw", "1", "2", "3"])
    t["edge/noise"] = [1.0, *ratios]
    assert ("supports the paper's choice" in clahe.clahe_verdict(t)) is supports


def test_clahe_figure(knees):
    fig = clahe.clahe_figure(knees[:2], (1.0, 2.0), labels=["a", "b"])
    assert len(fig.axes) == 6 and fig.axes[1].get_title() == "CLAHE clip 1"


# ---------------------------------------------------------------- loss
def test_influence_table_matches_the_library():
    t = loss.influence_table(TABLE2_COUNTS, ALPHA, paper=TABLE2_SHARES_PCT)
    assert t.loc["KL0", "share before %"] == pytest.approx(39.41, abs=0.01)
    assert t["after alpha %"].tolist() == pytest.approx([32.1, 29.58, 21.46, 10.7, 6.15],
                                                         abs=0.02)
    assert t.loc["KL4", "paper %"] == 37.2
    conj = loss.influence_table(TABLE2_COUNTS, [0.133, 0.267, 0.133, 0.133, 3.33])
    assert (0.94 * conj["after alpha %"]).tolist() == pytest.approx(TABLE2_SHARES_PCT,
                                                                     abs=0.25)


def test_focal_figure_uses_focal_loss():
    fig = loss.focal_figure(gammas=(0, 2))
    ce = fig.axes[0].lines[0].get_ydata()
    p = fig.axes[0].lines[0].get_xdata()
    assert ce == pytest.approx(-np.log(p), rel=1e-4)
    fl = fig.axes[0].lines[1].get_ydata()
    assert fl == pytest.approx(-((1 - p) ** 2) * np.log(p), rel=1e-3)


# ---------------------------------------------------------------- runs
def _fake_fit(calls: list, epochs_done: int | None = None):
    """A stand-in for engine.fit: writes the files a finished (or partial) run has."""

    def fit(cfg, out, resume=False, progress=False):
        calls.append({"out": out, "resume": resume})
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        n = epochs_done or cfg.train.epochs
        rows = [{"epoch": e, "val_macro_f1": 0.1 * e} for e in range(1, n + 1)]
        pd.DataFrame(rows).to_csv(out / "history.csv", index=False)
        (out / "best.safetensors").write_bytes(b"x" * 16)
        (out / "last_state.safetensors").write_bytes(b"x" * 16)
        return {}

    return fit


def test_train_or_reuse_trains_then_reuses(tmp_path):
    calls = []
    sets = ["train.epochs=3"]
    run = training.train_or_reuse(tmp_path / "r", "demo", sets, tmp_path / "data",
                                fit_fn=_fake_fit(calls))
    assert run == tmp_path / "r" and calls == [{"out": run, "resume": False}]
    assert training.train_or_reuse(tmp_path / "r", ["demo"], sets, tmp_path / "data",
                                 fit_fn=_fake_fit(calls)) == run
    assert len(calls) == 1  # reused, not retrained


def test_train_or_reuse_resumes_a_partial_run(tmp_path):
    calls = []
    sets = ["train.epochs=4"]
    training.train_or_reuse(tmp_path / "r", "demo", sets, fit_fn=_fake_fit(calls, epochs_done=2))
    cfg = load_config("demo", sets)
    assert training.run_status(tmp_path / "r", cfg) == "partial"
    training.train_or_reuse(tmp_path / "r", "demo", sets, fit_fn=_fake_fit(calls))
    assert calls[1]["resume"] is True
    assert training.run_status(tmp_path / "r", cfg) == "complete"


def test_train_or_reuse_never_overwrites_another_config(tmp_path):
    calls = []
    a = training.train_or_reuse(tmp_path / "r", "demo", ["train.epochs=2"], fit_fn=_fake_fit(calls))
    b = training.train_or_reuse(tmp_path / "r", "demo", ["train.epochs=3"], fit_fn=_fake_fit(calls))
    assert a == tmp_path / "r" and b.name.startswith("r-") and b != a
    assert yaml.safe_load((a / "config.yaml").read_text())["train"]["epochs"] == 2
    assert training.train_or_reuse(tmp_path / "r", "demo", ["train.epochs=3"],
                                 fit_fn=_fake_fit(calls)) == b
    assert len(calls) == 2


def test_run_status_early_stopping_counts_as_complete(tmp_path):
    calls = []
    cfg = load_config("demo", ["train.epochs=10", "train.patience=2"])
    training.train_or_reuse(tmp_path / "r", "demo", ["train.epochs=10", "train.patience=2"],
                          fit_fn=_fake_fit(calls, epochs_done=3))
    assert training.run_status(tmp_path / "r", cfg) == "partial"
    pd.DataFrame({"epoch": [1, 2, 3], "val_macro_f1": [0.5, 0.4, 0.4]}).to_csv(
        tmp_path / "r" / "history.csv", index=False)
    assert training.run_status(tmp_path / "r", cfg) == "complete"
    assert training.run_status(tmp_path / "empty", cfg) == "empty"
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.txt").write_text("x")
    assert training.run_status(tmp_path / "junk", cfg) == "other"


def test_train_or_reuse_reuses_a_real_run(tiny_run):
    """The config.yaml that engine.fit writes compares equal to the resolved config."""
    run, root = tiny_run
    sets = ["train.epochs=2", "train.batch_size=8", "train.max_steps_per_epoch=2",
            "train.warmup_epochs=1"]

    def refuse(*a, **k):
        raise AssertionError("trained again")

    assert training.train_or_reuse(run, "demo", sets, root, fit_fn=refuse) == run


def test_proposed_run_stacks_ablation_proposed(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(training, "train_or_reuse",
                        lambda run, profiles, sets, root: seen.update(run=run, p=profiles))
    training.proposed_run(tmp_path, ["demo"], [], None)
    assert seen == {"run": tmp_path / "proposed", "p": ["demo", "ablation-proposed"]}


def test_run_tables_and_curves(tiny_run):
    run, _ = tiny_run
    cfg = training.config_table(run)
    assert cfg.loc["data.image_size", "this run"] == "64"
    assert cfg.loc["model.attention_heads", "paper"] == "silent"
    summary = training.run_summary(run)
    assert summary.loc["epochs run", "value"] == "2"
    hist = training.read_history(run)
    assert len(hist) == 2 and training.read_history(run / "none").empty
    assert len(training.learning_curves(hist).axes) == 4


def test_predict_split_and_gates(tiny_run):
    run, root = tiny_run
    pred = predictions.predict_split(run / "best.safetensors", root, "val")
    n_val = len(discover(root).split("val"))
    assert len(pred) == n_val and set(pred.columns) >= {"grade", "pred", "p0", "gate_raw"}
    assert np.allclose(pred[[f"p{g}" for g in range(5)]].sum(axis=1), 1, atol=1e-4)
    assert pred.gate_raw.between(0, 1).all()
    t = evaluation.gate_table(pred)
    assert t["count"].sum() == n_val and set(t.index) <= set(KL)
    assert _is_figure(evaluation.gate_figure(pred))


# ---------------------------------------------------------------- ablation and evaluation
def test_run_ablation_table(tiny_run, monkeypatch, tmp_path):
    run, root = tiny_run
    runs = []
    monkeypatch.setattr(training, "train_or_reuse",
                        lambda r, profiles, sets, data_root: runs.append((r.name, profiles)) or run)
    df = training.run_ablation(tmp_path, ["demo"], [], root,
                             ["ablation-proposed", "ablation-no-aux"],
                             labels={"ablation-no-aux": "no aux"})
    # The proposed row reuses the training chapter's folder, runs_dir/proposed.
    assert runs == [("proposed", ["demo", "ablation-proposed"]),
                    ("ablation-no-aux", ["demo", "ablation-no-aux"])]
    assert list(df.index) == ["Proposed (dual-stream + attention)", "no aux"]
    assert df["ours vs row 1"].iloc[0] == 0 and np.isnan(df.loc["no aux", "paper test accuracy %"])
    assert df["paper test accuracy %"].iloc[0] == 72.06
    assert df["test accuracy %"].between(0, 100).all()
    assert _is_figure(training.ablation_figure(df))


def _metrics(n_boot: int = 50) -> dict:
    from koa_core.metrics.classification import classification_metrics

    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 80)
    pred = np.where(rng.random(80) < 0.6, y, rng.integers(0, 5, 80))
    return classification_metrics(y, pred, n_boot=n_boot)


def test_report_table_matches_metrics():
    m = _metrics()
    t = evaluation.report_table(m)
    assert t.loc["accuracy", "f1-score"] == pytest.approx(m["accuracy"], abs=1e-4)
    assert t.loc["accuracy", "precision"] == ""  # blank, as in the paper's layout
    assert t.loc["KL2", "recall"] == pytest.approx(m["per_class"]["2"]["recall"], abs=1e-4)
    assert t.loc["macro avg", "f1-score"] == pytest.approx(m["macro_f1"], abs=1e-4)
    assert t["support"].iloc[:5].sum() == 80
    assert list(t.columns) == list(evaluation.paper_report_table(4).columns)


def test_confusion_figure_and_ci_table():
    m = _metrics()
    fig = evaluation.confusion_figure({"a": m["confusion_matrix"], "b": m["confusion_matrix"]})
    assert len(fig.axes) == 2 and fig.axes[0].get_title() == "a"
    t = evaluation.ci_table(m)
    lo, hi = t.loc["accuracy"].iloc[1], t.loc["accuracy"].iloc[2]
    assert lo <= m["accuracy"] <= hi
    assert evaluation.ci_table(_metrics(n_boot=0)).loc["qwk"].iloc[1] == ""
    assert t.loc["mae (grades)"].iloc[1] == ""


def test_kl4_table():
    m = _metrics(0)
    t = evaluation.kl4_table({"ours": m})
    assert t.loc["KL4 recall", "ours"] == pytest.approx(m["per_class"]["4"]["recall"], abs=1e-4)
    assert t.loc["KL4 found", "ours"] == m["confusion_matrix"][4][4]
    assert t.loc["KL4 found", "paper (Table 4)"] == 40
    assert t.loc["KL4 recall", "paper (Table 4)"] == pytest.approx(40 / 51, abs=1e-4)
    assert t["paper (Table 4)"].tolist() == [0.7843, 40, 51]
    assert t["paper (Table 3)"].tolist() == [0.8039, 41, 51]


def test_comparison_table():
    t = evaluation.comparison_table()
    assert len(t) == len(TABLE7) + len(PUBLISHED)
    assert "chosen with test accuracy" in " ".join(t.caveat)
    m = {**_metrics(0), "note": "synthetic phantom"}
    t = evaluation.comparison_table(m, label="this book")
    assert t.iloc[-1]["source"] == "this book" and t.iloc[-1]["caveat"] == "synthetic phantom"
    assert t.iloc[-1]["accuracy %"] == pytest.approx(100 * m["accuracy"], abs=0.01)
    assert t.loc[0, "other"] == ""  # blank where nothing is published


# ---------------------------------------------------------------- Grad-CAM
def _pred_frame() -> pd.DataFrame:
    p = np.array([[0.9, 0.05, 0.03, 0.01, 0.01], [0.1, 0.8, 0.05, 0.03, 0.02],
                  [0.3, 0.25, 0.2, 0.15, 0.1], [0.05, 0.6, 0.3, 0.03, 0.02],
                  [0.95, 0.02, 0.01, 0.01, 0.01]])
    df = pd.DataFrame(p, columns=[f"p{g}" for g in range(5)])
    return df.assign(path=[f"{i}.png" for i in range(5)], grade=[0, 1, 3, 2, 0],
                     pred=p.argmax(1))


def test_pick_cases():
    cases = cams.pick_cases(_pred_frame(), n_correct=2, n_wrong=1)
    assert cases.case.tolist() == ["correct", "correct", "misclassified"]
    assert cases.path.tolist()[:2] == ["4.png", "1.png"]  # most confident, distinct grades
    assert cases.path.tolist()[2] == "2.png"  # the highest-entropy error
    assert cases.iloc[2].top2 == 1


def test_cam_cases_figure_and_share_table(tiny_run):
    run, root = tiny_run
    pred = predictions.predict_split(run / "best.safetensors", root, "test")
    cases = cams.pick_cases(pred.assign(pred=(pred.grade + 1) % 5), 0, 1)  # one error
    res = cams.cam_cases(run / "best.safetensors", cases, other="true")
    assert len(res) == len(cases)
    assert {k[0] for k in res[0]["maps"]} == {"raw", "clahe"}
    cam = next(iter(res[0]["maps"].values()))
    assert cam.shape == (64, 64) and 0 <= cam.min() and cam.max() <= 1
    fig = cams.cam_figure(res)
    assert len(fig.axes) == len(res) * 5
    t = cams.cam_share_table(res)
    assert t.shape == (1, 4) and (t.fillna(0) >= 0).all().all()  # NaN: an empty map
    assert list(t.columns.get_level_values("target")) == ["top-1", "true"] * 2


def test_train_or_reuse_refuses_unknown_profile(tmp_path):
    with pytest.raises(KoaError):
        training.train_or_reuse(tmp_path / "r", "no-such-profile", [], fit_fn=_fake_fit([]))


def test_cam_share_table_keeps_empty_maps():
    case = pd.Series({"case": "misclassified", "grade": 2})
    maps = {("raw", "top-1"): np.ones((8, 8)), ("raw", "true"): np.zeros((8, 8))}
    t = cams.cam_share_table([{"case": case, "targets": {"top-1": 1, "true": 2},
                                 "maps": maps}])
    assert t.shape == (1, 2) and np.isnan(t.iloc[0, 1]) and t.iloc[0, 0] == pytest.approx(1.0)


# ---------------------------------------------------------------- the published profile
@pytest.fixture(scope="module")
def val_only(phantom_root, tmp_path_factory) -> Path:
    """A sample in the committed layout: the phantom's validation knees only, SAMPLE.json."""
    import json
    import shutil

    root = tmp_path_factory.mktemp("sample") / "sample"
    shutil.copytree(phantom_root / "val", root / "val")
    (root / "SAMPLE.json").write_text(json.dumps({"command": "python make_sample.py ROOT",
                                                  "split": "val", "files": []}))
    return root


@pytest.fixture(scope="module")
def stats(index, tmp_path_factory) -> tuple[dict, Path]:
    """``koa data stats --json`` of the phantom, as the CLI writes it (with provenance)."""
    import json

    from koa_core.data.check import scan

    d = scan(index, workers=2).to_dict()
    d["provenance"] = {"command": f"koa data stats {index.root} --json",
                       "commit": "0123456789abcdef0123-dirty", "created": "2026-01-02T03:04"}
    path = tmp_path_factory.mktemp("stats") / "data-stats.json"
    path.write_text(json.dumps(d))
    return data.load_stats(path), path


def test_load_stats(tmp_path, stats):
    assert data.load_stats("") is None and stats[0]["images"] == 60
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(KoaError, match="koa data stats"):
        data.load_stats(tmp_path / "x.json")


def test_first_split_takes_the_split_that_exists(index, val_only):
    from types import SimpleNamespace

    sample = discover(val_only)
    assert data.first_split(index) == "train" and data.first_split(sample) == "val"
    assert data.first_split(index, prefer=("test", "val")) == "test"
    with pytest.raises(KoaError, match="no images"):
        data.first_split(SimpleNamespace(root="x", split=lambda s: []))
    imgs, grades = data.sample_images(sample, n=100)  # all of them, from val
    assert len(imgs) == len(sample.records) and sorted(grades) == sorted(
        r.grade for r in sample.records)
    fig = data.sample_grid(sample, per_grade=2, seed=0)
    assert len(fig.axes) == 10 and any(ax.images for ax in fig.axes)


def test_stats_tables_equal_the_index_tables(index, stats):
    from koa_core.data.check import scan

    st = stats[0]
    assert data.split_counts(st) == data.split_counts(index)
    pd.testing.assert_frame_equal(data.counts_table(st), data.counts_table(index))
    from_stats, from_scan = data.leakage_table(st), data.leakage_table(scan(index, workers=2))
    shared = from_scan.index
    assert set(shared) < set(from_stats.index) and "source formats" in from_stats.index
    assert from_stats.loc[shared, "value"].astype(str).tolist() == \
        from_scan["value"].astype(str).tolist()
    assert data.source_name(st) == data.source_name(index) == Path(index.root).name


def test_majority_table_and_imbalance_text(index, stats):
    st = {**stats[0], "counts": {k: v for k, v in stats[0]["counts"].items() if k != "test"}}
    m = data.majority_table(st)
    assert m.loc["test", "majority rate (ours)"] == "n/a: held out"
    val = data.split_counts(st)["val"]
    assert m.loc["val", "majority rate (ours)"] == f"{max(val) / sum(val):.3f}"
    assert m.loc["val", "paper's Table 1"] == f"{328 / 826:.3f}"
    no_test = discover(index.root)
    no_test.records = [r for r in no_test.records if r.split != "test"]
    assert data.majority_table(no_test).loc["test", "majority rate (ours)"].startswith("n/a (")
    ours, paper = data.counts_table(st), data.paper_counts_table()
    text = data.imbalance_text(ours, paper, m)
    assert f"{ours.loc['KL0', 'share %']:.1f} %" in text and "(paper's Table 1: 39.4 %" in text
    assert f"right on {100 * max(val) / sum(val):.1f} %" in text
    held = m.assign(**{"majority rate (ours)": "n/a: held out"})
    assert "always answers" not in data.imbalance_text(ours, paper, held)


def test_counts_match_text():
    paper = data.paper_counts_table()
    train = dict(zip("01234", TABLE1["train"]))
    ours = data.counts_table({"counts": {"train": train,
                                           "val": dict(zip("01234", [328, 153, 212, 106, 26]))}})
    text = data.counts_match_text(ours, paper)
    assert text.startswith("The train split (5,778 images) equals the paper's Table 1")
    assert "val split has 825 images (paper: 826), with grade shares within 0.1 points" in text
    assert text.endswith("(test not counted here).")
    moved = {"train": train, "val": dict(zip("01234", [327, 153, 212, 106, 28]))}
    text = data.counts_match_text(data.counts_table({"counts": moved}), paper)
    assert "val split (826 images) differs from the paper's Table 1 in KL0 327 vs 328, KL4" in text


def test_leakage_verdict_is_computed(stats):
    st = stats[0]
    t = data.leakage_table(st)
    assert data.leakage_verdict(t, []) == (
        "No patient appears in two splits; no file is duplicated across splits; no image "
        "fails to decode (0 discovery warning(s)). The data are usable for training.")
    bad = {**st, "leaking_patients": {"9000001": ["train", "val"]},
           "unreadable": ["a.png: empty file"],
           "problems": ["1 unreadable image(s)", "1 patient(s) in more than one split"]}
    t = data.leakage_table(bad)
    assert t.loc["patients in more than one split", "verdict"] == "LEAK, e.g. 9000001"
    text = data.leakage_verdict(t, ["w"])
    assert "1 patient(s) appears in two splits" in text and "1 image(s) fails" in text
    assert "(1 discovery warning(s))" in text and "NOT usable" in text


def test_stats_provenance_shows_no_build_paths(stats):
    st, _ = stats
    text = data.stats_provenance(st)
    assert "`koa data stats kl --json`" in text and "`0123456789ab-dirty`" in text
    assert "2026-01-02" in text and "60 images" in text and "/" not in text.split("`")[3]


def test_sample_table_and_note(val_only):
    sample = discover(val_only)
    t = data.sample_table(sample)
    assert list(t.index) == KL and t["knees"].sum() == len(sample.records)
    assert set(t["split"]) == {"val"}
    first = sorted(Path(r.path).stem for r in sample.records if r.grade == 0)
    assert t.loc["KL0", "files (OAI patient id + side)"] == ", ".join(first)
    note = data.sample_note(sample)
    assert f"sample of {len(sample.records)} real knees: the val split only" in note
    assert "`python make_sample.py ROOT`" in note and "enhanced" not in note
    study = data.sample_note(sample, study="clahe")
    assert study.startswith(note) and "each clip limit is one CLAHE pass on it." in study
    assert "second" not in study


def test_clahe_verdict_quotes_the_ratios(knees):
    t = clahe.clahe_table(knees[:1], clips=(1.0, 2.0))
    text = clahe.clahe_verdict(t)
    r = t["edge/noise"]
    assert f"edge gain to noise gain (1: {r['1']:.2f}, 2: {r['2']:.2f}) is highest" in text
    assert "second" not in text and "enhanced" not in text


def test_influence_text_and_table2_verdict():
    t = loss.influence_table(TABLE2_COUNTS, ALPHA, paper=TABLE2_SHARES_PCT)
    text = loss.influence_text(t, "the paper's counts")
    assert text.startswith("On the paper's counts (9,786 images), KL0 holds 39.4 % of the")
    assert f"{t.loc['KL4', 'after alpha %']:.1f} % of the influence after alpha" in text
    v = loss.table2_verdict(t)
    assert "6.2 % for KL4" in v and "prints 19.5 % and 37.2 %" in v
    assert "31.1 points (KL4)" in v and "sums to 94.0 %" in v


def test_pick_cases_top5_is_the_least_likely():
    cases = cams.pick_cases(_pred_frame(), n_correct=2, n_wrong=1)
    p = _pred_frame().set_index("path").loc[cases.path, [f"p{g}" for g in range(5)]].to_numpy()
    assert p[np.arange(len(p)), cases.top5].tolist() == p.min(axis=1).tolist()  # ties: any
    assert cases.iloc[2].top5 == 4 and cases.iloc[1].top5 == 4


def test_stream_cams_equal_explain_grad_cam(tiny_run):
    from koa_core.infer.explain import grad_cam
    from koa_core.model.checkpoint import load_checkpoint

    run, root = tiny_run
    pred = predictions.predict_split(run / "best.safetensors", root, "test")
    cases = cams.pick_cases(pred.assign(pred=(pred.grade + 1) % 5), 0, 2)
    res = cams.cam_cases(run / "best.safetensors", cases, other="top5")
    model, _ = load_checkpoint(run / "best.safetensors")
    assert [list(r["maps"]) for r in res] == [[("raw", "top-1"), ("raw", "top5"),
                                              ("clahe", "top-1"), ("clahe", "top5")]] * 2
    for r, (_, c) in zip(res, cases.iterrows()):
        assert r["targets"] == {"top-1": c.top1, "top5": c.top5}
        for (stream, target), cam in r["maps"].items():
            ref = grad_cam(model, r["views"], r["targets"][target], stream)
            assert cam.shape == ref.shape and np.abs(cam - ref).max() < 1e-4
    with pytest.raises(ValueError, match="other must be"):
        cams.cam_cases(run / "best.safetensors", cases, other="top3")
    assert cams.cam_cases(run / "best.safetensors", cases.iloc[:0]) == []


def test_cam_conflict_and_cases_text():
    def result(case, f1, f5):
        def cam(mass_in_band):
            m = np.zeros((10, 10))
            m[5, 5], m[0, 0] = mass_in_band, 1 - mass_in_band
            return m
        return {"case": pd.Series({"case": case}), "targets": {"top-1": 0, "top5": 4},
                "maps": {("raw", "top-1"): cam(f1), ("raw", "top5"): cam(f5),
                         ("clahe", "top-1"): cam(f1), ("clahe", "top5"): np.zeros((10, 10))}}

    res = [result("correct", 0.1, 0.9), result("misclassified", 0.9, 0.1),
           result("misclassified", 0.2, 0.8)]
    text = cams.cam_conflict_text(res)
    assert "Of the 2 misclassified case(s)" in text and "than the top-5 map" in text
    assert "1 of 2 case(s) in the raw stream" in text
    assert "0 of 0 case(s) in the clahe stream (2 with an empty map left out)" in text
    assert "not" in cams.cam_conflict_text(res[:1])
    pred = _pred_frame()
    cases = cams.pick_cases(pred, 2, 1)
    text = cams.cases_text(pred, cases, "val")
    right = int((pred.grade == pred.pred).sum())
    assert text.startswith(f"The model is right on {right} of the 5 val knees")
    assert "grade-balanced" not in text and "2 correct and 1 misclassified" in text
    assert f"entropies {cases.entropy.iloc[2]:.2f} (a uniform" in text


def test_checkpoint_note(tmp_path):
    import json

    ckpt = tmp_path / "m.safetensors"
    (tmp_path / "m.json").write_text(json.dumps({
        "select_metric": "macro_f1", "epoch": 10, "val_metrics": {"n": 826},
        "data": {"root": "kneeKL224, train+val"}, "hardware": "GPU X",
        "config": {"model": {"pretrained": "none"}}}))
    note = cams.checkpoint_note(ckpt, "val")
    assert note.startswith("**About the checkpoint.** It was selected by validation macro_f1 "
                           "(epoch 10, on 826 validation knees), so the val knees explained")
    assert 'sidecar as "kneeKL224, train+val"' in note and "from scratch" in note
    assert "take part" not in cams.checkpoint_note(ckpt, "test") and "CLAHE" not in note
    (tmp_path / "m.json").write_text(json.dumps({"data": {"root": "/abs/path"}}))
    assert cams.checkpoint_note(ckpt) == ""
    (tmp_path / "m.json").write_text(json.dumps({"preprocess": {"input_clahe_clip": 5.0,
                                                                "input_clahe_tiles": 8}}))
    assert cams.checkpoint_note(ckpt) == (
        "**About the checkpoint.** It was trained on CLAHE-enhanced crops, so it applies CLAHE "
        "at clip 5 (8 x 8 tiles) to every image it grades before the paper's steps (its "
        "sidecar's `input_clahe_clip`): the maps below are drawn on that enhanced view of each "
        "original knee.")


def test_crop_text(index, val_only):
    text = data.crop_text(discover(val_only), n=100)
    n = len(discover(val_only).records)
    assert text == (f"On the {n} images of this chapter (64x64 pixels), the central crop "
                    f"leaves {n} unchanged and crops 0.")
    assert data.crop_text(index, n=10).startswith("On the ")


def test_table2_reasons_and_conjecture_text():
    t = loss.influence_table(TABLE2_COUNTS, ALPHA, paper=TABLE2_SHARES_PCT)
    text = loss.table2_reasons(t)
    assert "- n·α is 513.0, 472.6, 342.9, 171.0 and 98.2 (sum 1597.7)" in text
    assert "shares of 32.1, 29.6, 21.5, 10.7 and 6.1 %" in text
    assert "0.379 for KL4" in text and "10.0 times" in text and "sum to 94.0 %" in text
    conj = loss.influence_table(TABLE2_COUNTS, [0.133, 0.267, 0.133, 0.133, 3.33])
    guess = (0.94 * conj["after alpha %"]).round(1)
    assert "within 0.20 points (largest gap at KL2)" in loss.conjecture_text(guess,
                                                                                t["paper %"])
