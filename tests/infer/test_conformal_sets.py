"""Sets of grades everywhere a grade is shown: koa calibrate fits them, koa predict shows them
(CSV, JSON, the printed line, the summary), koa evaluate measures them, and a checkpoint
without a calibration grades as before and says so once."""

import csv
import json
import shutil

import numpy as np
import pytest

from koa_core.cli import main
from koa_core.errors import KoaError
from koa_core.infer.evaluate import SetOptions, _fit_sets, evaluate_checkpoint
from koa_core.metrics.conformal import Conformal, set_label
from koa_core.model.checkpoint import read_sidecar, update_sidecar

SETS = Conformal("ordinal", 0.9, False, (0.6,), 100)


def _copy(tiny_run, tmp_path, conformal=None):
    run, root = tiny_run
    ckpt = tmp_path / "ckpt.safetensors"
    shutil.copy(run / "best.safetensors", ckpt)
    shutil.copy(run / "best.json", ckpt.with_suffix(".json"))
    if conformal is not None:
        update_sidecar(ckpt, {"conformal": conformal.to_dict()})
    return ckpt, root


def _predict(ckpt, files, tmp_path, capsys, *extra):
    out = tmp_path / f"p{len(list(tmp_path.glob('p*.csv')))}.csv"
    assert main(["predict", *map(str, files), "--checkpoint", str(ckpt), "--engine", "torch",
                 "--out", str(out), *extra]) == 0
    err = capsys.readouterr().err
    assert main(["predict", *map(str, files), "--checkpoint", str(ckpt), "--engine", "torch",
                 "--json", *extra]) == 0
    return list(csv.DictReader(open(out))), json.loads(capsys.readouterr().out), err


def _files(root):
    return sorted((root / "test").rglob("*.png"))[:6]


def test_a_checkpoint_without_sets_grades_as_before_and_says_so_once(tiny_run, tmp_path,
                                                                   capsys):
    ckpt, root = _copy(tiny_run, tmp_path)
    rows, js, err = _predict(ckpt, _files(root), tmp_path, capsys)
    assert all(r["set"] == "" and r["set_coverage"] == "" for r in rows)
    assert all("grade_set" not in p for p in js)
    assert err.count("no sets of grades (the checkpoint carries no conformal calibration") == 1
    (tmp_path / "b").mkdir()
    with_sets = _copy(tiny_run, tmp_path / "b", SETS)[0]
    assert [r["grade"] for r in rows] == [r["grade"] for r in _predict(with_sets, _files(root),
                                                                       tmp_path, capsys)[0]]


def test_the_set_is_shown_beside_every_grade(tiny_run, tmp_path, capsys):
    ckpt, root = _copy(tiny_run, tmp_path, SETS)
    files = _files(root)
    rows, js, err = _predict(ckpt, files, tmp_path, capsys)
    for row, p in zip(rows, js):
        want = SETS.sets(np.array([p["probabilities"]]))[0]
        assert p["grade_set"] == np.flatnonzero(want).tolist() and p["set_coverage"] == 0.9
        assert p["grade"] in p["grade_set"]
        assert row["set"] == set_label(want) and float(row["set_coverage"]) == 0.9
    sizes = [len(p["grade_set"]) for p in js]
    assert (f"sets at 90 %: {sizes.count(1)} of one grade, {sizes.count(2)} of two, "
            f"{sum(s >= 3 for s in sizes)} of three or more") in err
    assert main(["predict", str(files[0]), "--checkpoint", str(ckpt), "--engine", "torch"]) == 0
    line = capsys.readouterr().out.strip()
    assert f"  set {rows[0]['set']} at 90 %" in line  # beside the grade, before any flag
    # the report picture and its index carry the set
    rep = tmp_path / "rep"
    assert main(["predict", *map(str, files[:2]), "--checkpoint", str(ckpt), "--engine",
                 "torch", "--report", str(rep), "--quiet"]) == 0
    capsys.readouterr()
    index = (rep / "index.html").read_text()
    assert all(f"set {r['set']} at 90 %" in index for r in rows[:2])
    assert len(list(rep.glob("*_report.png"))) == 2
    from koa_core.infer.knee_report import KneeReport, build_figure

    fig = build_figure(KneeReport("k.png", np.zeros((64, 64), np.uint8),
                                  [0.05, 0.5, 0.3, 0.1, 0.05], 1, None, {},
                                  grade_set=[1, 2], set_coverage=0.9))
    assert "Set KL1–KL2 at 90 % (outlined)" in [t.get_text() for ax in fig.axes
                                                 for t in ax.texts]
    # the plain softmax asked for: the sets, fitted on calibrated probabilities, do not apply
    rows, js, err = _predict(ckpt, files, tmp_path, capsys, "--uncalibrated")
    assert all("grade_set" not in p for p in js) and "--uncalibrated" in err


def test_evaluate_measures_the_sets(tiny_run, tmp_path, capsys):
    ckpt, root = _copy(tiny_run, tmp_path, SETS)
    m = evaluate_checkpoint(ckpt, root, split="test", n_boot=0, predictions=tmp_path / "e.csv")
    rows = list(csv.DictReader(open(tmp_path / "e.csv")))
    probs = np.array([[float(r[f"p{g}"]) for g in range(5)] for r in rows])
    y = np.array([int(r["true_grade"]) for r in rows])
    sets = SETS.sets(probs)
    c = m["conformal"]
    assert c["target"] == 0.9 and c["coverage"] == pytest.approx(sets[np.arange(len(y)), y].mean())
    assert c["mean_set_size"] == pytest.approx(sets.sum(1).mean())
    assert c["coverage_ci"][0] <= c["coverage"] <= c["coverage_ci"][1]
    assert set(c["per_grade"]) == {str(g) for g in np.unique(y)}
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data", str(root), "--split", "test",
                 "--n-boot", "0", "--quiet"]) == 0
    assert "sets of grades (ordinal, target 90 %): coverage" in capsys.readouterr().out
    (tmp_path / "x").mkdir()
    plain = evaluate_checkpoint(_copy(tiny_run, tmp_path / "x")[0], root, split="test", n_boot=0)
    assert "conformal" not in plain


def test_calibrate_fits_sets_where_the_knees_allow():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(5), 120)
    y = np.array([rng.choice(5, p=row) for row in p])
    entry, skipped = _fit_sets(p, y, SetOptions(0.9, "ordinal", False), {"command": "x"})
    assert skipped is None and entry["n"] == 120 and entry["split"] == "val"
    assert entry["measured"]["coverage"] >= 0.9 and entry["command"] == "x"
    assert Conformal.from_dict(entry).sets(p).sum(1).mean() == pytest.approx(
        entry["measured"]["mean_set_size"])
    entry, skipped = _fit_sets(p[:5], y[:5], SetOptions(), {})
    assert entry is None and "at least 9 calibration knees; got 5" in skipped
    with pytest.raises(KoaError, match="between 0 and 1"):
        _fit_sets(p, y, SetOptions(coverage=1.5), {})


def test_calibrate_on_too_few_knees_stores_the_temperature_and_no_stale_sets(
        tiny_run, tmp_path, capsys):
    ckpt, root = _copy(tiny_run, tmp_path, SETS)  # sets of an earlier calibration
    assert main(["calibrate", "--checkpoint", str(ckpt), "--data", str(root), "--engine",
                 "torch", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "no sets of grades stored: conformal sets at 0.9 need at least 9" in out
    side = read_sidecar(ckpt)
    assert side["calibration"]["temperature"] > 0 and side.get("conformal") is None
