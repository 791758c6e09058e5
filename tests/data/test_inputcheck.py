"""Know your input (koa_core.data.inputcheck): an image unlike the training knees is flagged -
already CLAHE-enhanced, not a knee-joint crop, inverted, too small, blank - still graded,
and the flag reaches the CSV row, the report, the batch summary and `koa data check`."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from koa_core.cli import main
from koa_core.data.inputcheck import InputCheck, fit_profile, summarize_flags
from koa_core.data.preprocess import apply_clahe
from koa_core.errors import KoaError
from koa_core.infer.profile import check_for
from koa_core.model.checkpoint import DEFAULT_CHECKPOINT, read_sidecar

SAMPLE = Path(__file__).resolve().parents[2] / "book" / "sample"
FILES = sorted(SAMPLE.glob("val/*/*.webp"))


def _read(p) -> np.ndarray:
    return cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)


@pytest.fixture(scope="module")
def shipped() -> InputCheck:
    check = check_for({})  # a sidecar without a profile falls back to the shipped one
    assert check.source == "the shipped checkpoint's training images"
    return check


def test_the_shipped_profile_separates_originals_from_their_enhanced_twins(shipped):
    """On the 50 sample knees (validation, never seen by the profile): no original is
    flagged enhanced, every CLAHE twin at clip 5.0 (the enhanced copy's recipe) and at
    clip 3.0 is. The full validation split's rates are in the README."""
    assert len(FILES) == 50
    originals = [shipped.flags(_read(f)) for f in FILES]
    assert sum("enhanced" in f for f in originals) == 0
    assert sum(bool(f) for f in originals) <= 2  # the sample holds one knee stored inverted
    for clip in (5.0, 3.0):
        twins = [shipped.flags(apply_clahe(_read(f), clip, 8)) for f in FILES]
        assert sum("enhanced" in f for f in twins) == 50, clip
        assert sum("not-a-knee-crop" in f for f in twins) == 0, clip


def _two_knees(a, b) -> np.ndarray:
    canvas = np.zeros((700, 900), np.uint8)  # a radiograph of both knees, not a crop
    canvas[200:424, 150:374], canvas[200:424, 500:724] = a, b[:, ::-1]
    return canvas


def test_what_is_not_a_knee_crop_is_flagged(shipped):
    from matplotlib import cbook
    from PIL import Image

    knee, other = _read(FILES[0]), _read(FILES[30])
    with cbook.get_sample_data("grace_hopper.jpg") as fh:
        photo = np.asarray(Image.open(fh).convert("L"))
    assert shipped.flags(photo) == ["not-a-knee-crop"]
    assert shipped.flags(_two_knees(knee, other)) == ["not-a-knee-crop"]
    assert shipped.flags(cv2.resize(np.hstack([knee, other]), (900, 450))) == \
        ["not-a-knee-crop"]  # wide: aspect 2 against square training crops
    assert shipped.flags(255 - knee) == ["inverted"]
    assert shipped.flags(cv2.resize(knee, (80, 80), interpolation=cv2.INTER_AREA)) == ["small"]
    assert "low-contrast" in shipped.flags(np.full((224, 224), 128, np.uint8))
    assert shipped.flags(knee) == []
    # the same knee at twice the size, as a user's own crop might be: still a knee
    assert shipped.flags(cv2.resize(knee, (448, 448))) == []


def test_a_profile_fitted_on_other_images_judges_by_them():
    """fit_profile learns from what it is given: fitted on the enhanced twins, the originals
    are no longer 'enhanced' and twice-enhanced knees are."""
    twins = [apply_clahe(_read(f), 5.0, 8) for f in FILES]
    check = InputCheck(fit_profile(twins, "twins"), "test")
    assert sum("enhanced" in check.flags(t) for t in twins) <= 1  # its own 99.5 % quantile
    assert sum("enhanced" in check.flags(_read(f)) for f in FILES) == 0
    assert sum("enhanced" in check.flags(apply_clahe(t, 5.0, 8)) for t in twins) >= 45
    with pytest.raises(KoaError, match="at least 20 training images"):
        fit_profile(twins[:5], "too few")
    with pytest.raises(KoaError, match="unreadable"):
        InputCheck({"enhanced": {}}, "a broken sidecar")


def test_summary_counts_flagged_images_once():
    assert summarize_flags([[], [], []]) == ""
    assert summarize_flags([["enhanced"], [], ["not-a-knee-crop", "small"], ["enhanced"]]) == \
        "3 flagged by the input check (enhanced 2, not-a-knee-crop 1, small 1)"


def test_predict_grades_flagged_files_and_says_so(tmp_path, capsys):
    """A pre-enhanced knee is graded, its row says 'enhanced', a plain one 'ok', and the
    summary line counts the flags; the report index shows the flag too."""
    enhanced = tmp_path / "enhanced.png"
    cv2.imwrite(str(enhanced), apply_clahe(_read(FILES[3]), 5.0, 8))
    wide = tmp_path / "both.png"
    cv2.imwrite(str(wide), _two_knees(_read(FILES[0]), _read(FILES[30])))
    out = tmp_path / "grades.csv"
    inputs = [str(FILES[3]), str(enhanced), str(wide)]
    assert main(["predict", *inputs, "--out", str(out), "--engine", "torch"]) == 0
    rows = list(csv.DictReader(open(out)))
    assert [r["input_check"] for r in rows] == ["ok", "enhanced", "not-a-knee-crop"]
    assert all(r["grade"] != "" and r["error"] == "" for r in rows)
    err = capsys.readouterr().err
    assert err.startswith("graded 3 of 3 file(s), 0 failed; sets at 90 %")
    assert "; 2 flagged by the input check (enhanced 1, not-a-knee-crop 1)" in err
    # a flagged knee keeps its flag beside its set: the guarantee does not cover it
    assert all(r["set"] for r in rows)
    assert main(["predict", str(enhanced), "--json", "--engine", "torch"]) == 0
    got = json.loads(capsys.readouterr().out)[0]
    assert got["input_flags"] == ["enhanced"] and got["grade"] in got["grade_set"]


def test_report_index_shows_the_flag(tmp_path):
    from koa_core.infer.knee_report import write_html_index

    page = write_html_index([{"name": "a.png", "grade": 2, "probabilities": [.1, .2, .4, .2, .1],
                              "gate": None, "flags": ["enhanced"]},
                             {"name": "b.png", "grade": 1, "probabilities": [.1, .5, .2, .1, .1],
                              "gate": None, "flags": []}], tmp_path).read_text()
    assert page.count("input check: enhanced") == 1


def test_data_check_says_when_a_folder_looks_pre_enhanced(tmp_path, capsys):
    """koa data check on a copy whose every image is CLAHE(5.0) of an original (what the
    project used to train on) warns; on the originals it does not."""
    originals, enhanced = tmp_path / "orig", tmp_path / "enh"
    for f in FILES[::2]:
        rel = f.relative_to(SAMPLE)
        for root in (originals, enhanced):
            (root / rel.parent).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, originals / rel)
        cv2.imwrite(str((enhanced / rel).with_suffix(".png")), apply_clahe(_read(f), 5.0, 8))
    main(["data", "check", str(originals)])
    out = capsys.readouterr().out
    assert "val: 25 images" in out and "looks CLAHE-enhanced" not in out
    main(["data", "check", str(enhanced)])
    out = capsys.readouterr().out
    assert "warning: val looks CLAHE-enhanced already (25 of 25 images)" in out
    assert main(["data", "stats", str(enhanced), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)["input_check"]
    assert stats["looks_enhanced"] == ["val"] and stats["flags"]["val"]["enhanced"] == 25


def test_input_profile_command_fits_on_training_images_only(tiny_run, tmp_path, capsys,
                                                            monkeypatch):
    from koa_core.infer import profile

    run, root = tiny_run
    ckpt = tmp_path / "c.safetensors"
    shutil.copy(run / "best.safetensors", ckpt)
    shutil.copy(run / "best.json", ckpt.with_suffix(".json"))
    weights = ckpt.read_bytes()
    seen = []
    read = profile.profile_images
    monkeypatch.setattr(profile, "profile_images",
                        lambda paths, *a: (seen.extend(paths), read(paths, *a))[1])
    assert main(["input-profile", "--checkpoint", str(ckpt), "--data", str(root),
                 "--images", "30"]) == 0
    assert seen and all("/train/" in p for p in seen)
    prof = read_sidecar(ckpt)["input_profile"]
    assert prof["images"] == 30 and prof["command"].startswith("koa input-profile")
    assert ckpt.read_bytes() == weights
    assert check_for(read_sidecar(ckpt)).source == "the checkpoint's training images"
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"x")
    capsys.readouterr()
    assert main(["input-profile", "--checkpoint", str(onnx), "--data", str(root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("koa: error: ") and ".safetensors" in err[0]


def test_the_shipped_sidecar_carries_its_profile():
    prof = read_sidecar(DEFAULT_CHECKPOINT)["input_profile"]
    assert prof["command"].startswith("koa input-profile --checkpoint")
    assert prof["images"] == 1000 and prof["aspect"] == [1.0, 1.0]
