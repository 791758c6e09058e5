"""`koa predict` on folders and batches (koa_core.infer.predict): inputs walked in sorted order,
one CSV row per file that never stops at a bad file, DICOM photometry and spacing in the
rows, Grad-CAM at the input's own resolution, per-knee reports with an index, a valid
partial CSV after an interruption, and one-line user errors.

Everything runs on the session's tiny 64-pixel model (``tiny_run``); Grad-CAM of that model
is cheap. The DICOM files are built here with pydicom (as in tests/data/test_dicom.py).
"""

from __future__ import annotations

import csv
import html
import json
import os
import signal
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_dicom import _dicom

from koa_core.cli import main
from koa_core.data.imaging import read_image
from koa_core.data.inputcheck import summarize_flags
from koa_core.data.preprocess import crop_box
from koa_core.infer import backends
from koa_core.infer.predict import CSV_FIELDS, cam_on_input, collect_inputs

PNG_ERROR = "not a readable PNG, JPEG, WebP or TIFF image (truncated or corrupt?)"


# ------------------------------------------------------------------ helpers
def _phantom_pngs(root: Path, n: int | None = None) -> list[Path]:
    files = sorted(root.rglob("*.png"))
    return files if n is None else files[:n]


def _gray(path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert img is not None and img.dtype == np.uint8 and img.ndim == 2, path
    return img


def _stretched(path) -> np.ndarray:
    """A phantom image stretched to exactly 0..255: a DICOM without a window (scaled
    min..max) then decodes to these very pixels, MONOCHROME1 or 2 alike."""
    img = _gray(path).astype(np.float64)
    out = np.round((img - img.min()) * 255.0 / (img.max() - img.min())).astype(np.uint8)
    assert out.min() == 0 and out.max() == 255
    return out


def _ckpt(tiny_run) -> str:
    return str(tiny_run[0] / "best.safetensors")


def _rows(path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def _probs(row: dict) -> np.ndarray:
    return np.array([float(row[f"p{k}"]) for k in range(5)])


@pytest.fixture
def fp32(monkeypatch):
    """Force fp32 so that equal pixels give equal probabilities on any CPU."""
    monkeypatch.setattr(backends, "amp_dtype", lambda mode, device: None)


# ------------------------------------------------------------------ 1. mixed folder
def test_mixed_folder_csv_row_per_file_errors_and_dicom(tiny_run, tmp_path, capsys, fp32,
                                                         tree_hash):
    _, phantom = tiny_run
    pngs = _phantom_pngs(phantom)
    px = _stretched(pngs[-1])  # a KL4 knee (the last folder)
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    knee0 = _gray(pngs[0])
    assert cv2.imwrite(str(folder / "a.png"), np.hstack([knee0, knee0[:, :30]]))  # 64 x 94
    assert cv2.imwrite(str(folder / "b16.tif"), px.astype(np.uint16) * 257)
    _dicom(folder / "c_m1.dcm", 255 - px, photometric="MONOCHROME1", PixelSpacing=["0.15", "0.2"])
    _dicom(folder / "c_m2.dcm", px, photometric="MONOCHROME2", PixelSpacing=["0.143", "0.143"])
    good_png = (folder / "a.png").read_bytes()
    (folder / "d_trunc.png").write_bytes(good_png[: len(good_png) // 2])
    (folder / "e_text.png").write_text("this is not an image\n" * 10)
    (folder / "notes.txt").write_text("to be skipped\n")
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1" + b"\0" * 100)
    _dicom(folder / "sub" / "IM0001", px, ImagerPixelSpacing=["0.1", "0.125"])
    # the decoding these expectations rest on (all same pixels as px)
    for name in ("b16.tif", "c_m1.dcm", "c_m2.dcm", "sub/IM0001"):
        np.testing.assert_array_equal(read_image(folder / name)[0], px)
    before = tree_hash(folder)
    out = tmp_path / "pred.csv"

    rc = main(["predict", str(folder), "--out", str(out), "--checkpoint", _ckpt(tiny_run)])
    stdout, stderr = capsys.readouterr()

    assert rc == 1
    assert tree_hash(folder) == before  # nothing written, touched or removed in the folder
    header, rows = _rows(out)
    assert header == CSV_FIELDS
    order = ["a.png", "b16.tif", "c_m1.dcm", "c_m2.dcm", "d_trunc.png", "e_text.png",
             "sub/IM0001"]
    assert [r["path"] for r in rows] == [str(folder / n) for n in order]
    by = dict(zip(order, rows))
    for name in ("d_trunc.png", "e_text.png"):
        r = by[name]
        assert r["error"] == PNG_ERROR, r
        assert all(r[k] == "" for k in CSV_FIELDS if k not in ("path", "error")), r
    good = [n for n in order if n not in ("d_trunc.png", "e_text.png")]
    for name in good:
        r = by[name]
        p = _probs(r)
        assert r["error"] == "" and r["grade"] != ""
        assert int(r["grade"]) == int(p.argmax()) and 0 <= int(r["grade"]) <= 4
        assert p.sum() == pytest.approx(1.0, abs=1e-5) and (p >= 0).all()
        gate = float(r["gate_raw"]), float(r["gate_clahe"])
        assert sum(gate) == pytest.approx(1.0, abs=1e-5) and min(gate) >= 0
        assert (r["width"], r["height"]) == (("94", "64") if name == "a.png" else ("64", "64"))
        assert r["engine"] == "torch" and r["precision"] == "fp32"
    # the input check judged every graded file (64 px phantoms: all "small", by the shipped
    # profile of 224 px crops) and the summary counts what the rows say
    flags = [by[n]["input_check"].split("; ") for n in good]
    assert all("small" in f for f in flags)
    flagged = summarize_flags(flags)
    # photometry and spacing of the DICOM rows; none for the PNG and TIFF
    assert [by[n]["photometric"] for n in good] == ["", "", "MONOCHROME1", "MONOCHROME2",
                                                     "MONOCHROME2"]
    assert [by[n]["pixel_spacing_mm"] for n in good] == ["", "", "0.15 0.2", "0.143 0.143",
                                                          "0.1 0.125"]
    # the same pixels stored four ways give one grade and the same probabilities
    ref = by["c_m2.dcm"]
    for name in ("b16.tif", "c_m1.dcm", "sub/IM0001"):
        assert by[name]["grade"] == ref["grade"], name
        np.testing.assert_allclose(_probs(by[name]), _probs(ref), atol=1e-4, err_msg=name)
    assert np.abs(_probs(by["a.png"]) - _probs(ref)).max() > 1e-3  # a different knee
    # stderr: one line per broken file, then the summary; nothing on stdout
    assert stdout == ""
    assert stderr.splitlines() == [
        f"{folder / 'd_trunc.png'}: error: {PNG_ERROR}",
        f"{folder / 'e_text.png'}: error: {PNG_ERROR}",
        f"graded 5 of 7 file(s), 2 failed; no sets of grades (the checkpoint carries no "
        f"conformal calibration; koa calibrate fits one); {flagged}; skipped 1 file(s) that are "
        f"not images; rows in {out}",
    ]


# ------------------------------------------------------------------ 2. inputs
def test_collect_inputs_walks_sorted_skips_hidden_keeps_named_files(tmp_path):
    d = tmp_path / "d"
    for sub in ("sub", "a_sub", ".git", ".hidden_dir", "sub/deeper"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    for name in ("b.png", "a.JPG", "c.webp", "e.tiff", "f.TIF", "g.jpeg", "x.dcm",
                 ".hidden.png", ".git/HEAD.png", ".hidden_dir/k.png", "a_sub/z.png",
                 "sub/deeper/y.png"):
        (d / name).write_bytes(b"whatever")
    (d / "readme.md").write_text("skip me")
    (d / "sub" / "data.bin").write_bytes(b"\0" * 300)  # no suffix match, no DICM preamble
    _dicom(d / "sub" / "IM0002", np.zeros((4, 6), np.uint8))  # DICOM found by its preamble
    odd = tmp_path / "scan.xyz"
    odd.write_text("named explicitly, so tried")
    hidden = tmp_path / ".named.png"
    hidden.write_bytes(b"named explicitly, so tried")
    missing = tmp_path / "missing.png"

    got = collect_inputs([str(odd), str(d), str(hidden), str(missing)])

    assert got.files == [str(odd),
                         str(d / "a.JPG"), str(d / "b.png"), str(d / "c.webp"),
                         str(d / "e.tiff"), str(d / "f.TIF"), str(d / "g.jpeg"),
                         str(d / "x.dcm"),
                         str(d / "a_sub" / "z.png"),
                         str(d / "sub" / "IM0002"), str(d / "sub" / "deeper" / "y.png"),
                         str(hidden), str(missing)]
    assert got.skipped == 2  # readme.md and sub/data.bin; hidden entries are not counted
    assert collect_inputs([str(tmp_path / "empty_dir_that_is_missing")]).files == \
        [str(tmp_path / "empty_dir_that_is_missing")]


# ------------------------------------------------------------------ 3. CAM placement
def test_cam_on_input_places_the_map_on_the_crop_only():
    ones = np.ones((7, 7), np.float32)
    got = cam_on_input(ones, (50, 80), (10, 20, 30, 45))  # a non-square box
    assert got.shape == (50, 80) and got.dtype == np.float32
    inside = np.zeros((50, 80), bool)
    inside[10:40, 20:65] = True
    assert (got[inside] == 1.0).all()
    assert (got[~inside] == 0.0).all()
    # orientation: a map that grows down the rows stays so, constant along each row
    ramp = np.repeat(np.linspace(0, 1, 8, dtype=np.float32)[:, None], 8, axis=1)
    got = cam_on_input(ramp, (50, 80), (10, 20, 30, 45))
    box = got[10:40, 20:65]
    assert (np.diff(box[:, 0]) >= 0).all() and box[-1, 0] - box[0, 0] > 0.8
    assert np.ptp(box, axis=1).max() < 1e-6
    assert (got[~inside] == 0.0).all()
    # whole-image box: a plain resize; values stay in [0, 1]
    got = cam_on_input(np.full((4, 4), 2.0), (9, 5), (0, 0, 9, 5))
    assert got.shape == (9, 5) and (got == 1.0).all()


@pytest.fixture(scope="module")
def wide_cams(tiny_run, tmp_path_factory):
    """``koa predict IMAGE --cam DIR --json`` on a 240x300 knee with dim padding, so that
    crop_box (the model's input) is a 160-pixel square inside it: (image, box, cams, json)."""
    _, phantom = tiny_run
    knee = cv2.resize(_stretched(_phantom_pngs(phantom)[-1]), (160, 160),
                      interpolation=cv2.INTER_LINEAR)
    img = np.full((240, 300), 2, np.uint8)  # dim padding: trimmed, but not pure black
    img[50:210, 100:260] = knee
    tmp = tmp_path_factory.mktemp("wide_cams")
    src = tmp / "in" / "wide knee.png"
    src.parent.mkdir()
    assert cv2.imwrite(str(src), img)
    box = crop_box(img)
    assert box == (50, 100, 160, 160)  # not the whole image
    cams = tmp / "cams"
    out = tmp / "out.json"
    with open(out, "w") as fh:
        real, sys.stdout = sys.stdout, fh
        try:
            rc = main(["predict", str(src), "--cam", str(cams), "--checkpoint",
                       _ckpt(tiny_run), "--json"])
        finally:
            sys.stdout = real
    assert rc == 0
    return img, box, cams, json.loads(out.read_text())


def _inside(shape, box) -> np.ndarray:
    top, left, h, w = box
    inside = np.zeros(shape, bool)
    inside[top:top + h, left:left + w] = True
    return inside


def test_cam_images_have_the_inputs_size(wide_cams):
    img, box, cams, out = wide_cams
    assert sorted(p.name for p in cams.iterdir()) == ["wide_knee_clahe_cam.png",
                                                      "wide_knee_raw_cam.png"]
    assert out[0]["cams"] == [str(cams / "wide_knee_raw_cam.png"),
                              str(cams / "wide_knee_clahe_cam.png")]
    assert out[0]["size"] == [240, 300]
    inside = _inside(img.shape, box)
    for stream in ("raw", "clahe"):
        pic = cv2.imread(str(cams / f"wide_knee_{stream}_cam.png"), cv2.IMREAD_UNCHANGED)
        assert pic.shape == (240, 300, 3), stream  # the input's height and width
        b, g, r = (pic[..., k].astype(int) for k in range(3))
        assert not ((r == g) & (g == b))[inside].all(), f"{stream}: no heat map on the crop"


def test_cam_images_are_the_plain_image_outside_the_crop(wide_cams):
    """The map covers only the model's input (crop_box); the rest of the picture is the
    input image itself, with no heat colour (jet's colour for 0 is dark blue)."""
    img, box, cams, _ = wide_cams
    outside = ~_inside(img.shape, box)
    for stream in ("raw", "clahe"):
        pic = cv2.imread(str(cams / f"wide_knee_{stream}_cam.png"), cv2.IMREAD_UNCHANGED)
        b, g, r = (pic[..., k].astype(int) for k in range(3))
        grey = (r == g) & (g == b)
        assert grey[outside].all(), \
            f"{stream}: heat colour on {(~grey[outside]).sum()} pixels outside the crop " \
            f"(e.g. BGR {pic[outside][~grey[outside]][0].tolist()})"
        if stream == "raw":  # the input's own pixels there
            np.testing.assert_array_equal(pic[..., 0][outside], img[outside])


# ------------------------------------------------------------------ 4. reports
def test_report_pictures_and_index(tiny_run, tmp_path, capsys):
    _, phantom = tiny_run
    a, b = _phantom_pngs(phantom, 2)
    bad = tmp_path / "broken <1>.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    rep = tmp_path / "report"

    rc = main(["predict", str(a), str(bad), str(b), "--report", str(rep), "--checkpoint",
               _ckpt(tiny_run)])
    stdout, stderr = capsys.readouterr()

    assert rc == 1
    assert sorted(p.name for p in rep.iterdir()) == sorted(
        ["index.html", f"{a.stem}_report.png", f"{b.stem}_report.png"])
    for stem in (a.stem, b.stem):
        pic = cv2.imread(str(rep / f"{stem}_report.png"))
        assert pic is not None and pic.shape[0] > 100 and pic.shape[1] > 100
    page = (rep / "index.html").read_text(encoding="utf-8")
    assert page.count('<tr class="ok">') == 2 and page.count('<tr class="failed">') == 1
    for p in (a, bad, b):
        assert html.escape(str(p)) in page
    assert html.escape(PNG_ERROR) in page
    assert f'src="{a.stem}_report.png"' in page and f'src="{b.stem}_report.png"' in page
    assert "3 files: 2 graded, 1 failed." in page
    # rows of the index in the order given
    assert page.index(html.escape(str(a))) < page.index(html.escape(str(bad))) \
        < page.index(html.escape(str(b)))
    assert len(stdout.splitlines()) == 2
    assert stderr.splitlines() == [f"{bad}: error: {PNG_ERROR}"]


# ------------------------------------------------------------------ 5. interruption
class _Escaped(Exception):
    """The test's own SIGTERM handler ran: the command under test had none installed."""


def _guard(signum, frame):
    raise _Escaped


def test_sigterm_leaves_a_valid_partial_csv(tiny_run, tmp_path, monkeypatch, capsys):
    """SIGTERM (here sent by the process to itself once two rows are written, as a job
    scheduler would) ends `koa predict --out` with one line, status 130, a CSV of whole
    rows, and the previous SIGTERM handler restored."""
    from koa_core.infer import predict

    _, phantom = tiny_run
    pngs = _phantom_pngs(phantom)
    folder = tmp_path / "many"
    folder.mkdir()
    n_files = 60
    for i in range(n_files):
        os.link(pngs[i % len(pngs)], folder / f"k{i:05d}.png")
    out = tmp_path / "partial.csv"
    real = predict.iter_predictions

    def interrupted(*a, **k):
        for n, pred in enumerate(real(*a, **k)):
            if n == 2:  # rows 0 and 1 are written
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.5)  # the handler runs at the next bytecode boundary
            yield pred

    monkeypatch.setattr(predict, "iter_predictions", interrupted)
    old = signal.signal(signal.SIGTERM, _guard)
    try:
        rc = main(["predict", str(folder), "--out", str(out), "--checkpoint", _ckpt(tiny_run),
                   "--batch-size", "4", "--engine", "torch"])
        assert signal.getsignal(signal.SIGTERM) is _guard  # restored afterwards
    finally:
        signal.signal(signal.SIGTERM, old)
    stdout, stderr = capsys.readouterr()
    assert rc == 130, stderr
    assert "Traceback" not in stderr, stderr
    assert stderr.strip().splitlines()[-1].startswith("koa: error: interrupted"), stderr
    assert str(out) in stderr.strip().splitlines()[-1]
    assert stdout == ""
    text = out.read_text()
    assert text.endswith("\n")  # no half-written last line
    header, rows = _rows(out)
    assert header == CSV_FIELDS
    assert 2 <= len(rows) < n_files
    for i, r in enumerate(rows):
        assert set(r) == set(CSV_FIELDS) and None not in r.values(), r
        assert r["path"] == str(folder / f"k{i:05d}.png")
        assert r["grade"] in {"0", "1", "2", "3", "4"} and r["error"] == ""
        assert _probs(r).sum() == pytest.approx(1.0, abs=1e-5)


# ------------------------------------------------------------------ 6. JSON and streaming
def test_json_sizes_and_streamed_lines(tiny_run, tmp_path, capsys):
    _, phantom = tiny_run
    knee = _gray(_phantom_pngs(phantom)[0])
    wide = tmp_path / "wide.png"
    assert cv2.imwrite(str(wide), np.hstack([knee, knee[:, :30]]))  # 64 rows, 94 columns
    tall = tmp_path / "tall.tif"
    assert cv2.imwrite(str(tall), np.vstack([knee, knee[:20]]))  # 84 rows, 64 columns
    bad = tmp_path / "empty.png"
    bad.write_bytes(b"")
    odd = tmp_path / "scan.xyz"
    odd.write_text("not an image")
    args = ["predict", str(wide), str(bad), str(tall), str(odd), "--checkpoint",
            _ckpt(tiny_run)]

    assert main([*args, "--json"]) == 1
    stdout, stderr = capsys.readouterr()
    got = json.loads(stdout)
    assert [e["path"] for e in got] == [str(wide), str(bad), str(tall), str(odd)]
    assert got[0]["size"] == [64, 94] and got[2]["size"] == [84, 64]
    for e in (got[0], got[2]):
        assert "error" not in e and e["grade"] == int(np.argmax(e["probabilities"]))
        assert sum(e["probabilities"]) == pytest.approx(1.0, abs=1e-5)
    assert got[1] == {"path": str(bad), "error": "empty file"}
    assert set(got[3]) == {"path", "error"} and "unsupported file type" in got[3]["error"]
    assert stderr == ""  # with --json the errors are in the JSON only

    assert main(args) == 1  # no --out, no --json: a line per file as it is graded
    stdout, stderr = capsys.readouterr()
    lines = stdout.splitlines()
    assert len(lines) == 2
    for line, e in zip(lines, (got[0], got[2])):
        assert line.startswith(f"{e['path']}: KL{e['grade']} (")
        probs = " ".join(f"{p:.3f}" for p in e["probabilities"])
        assert line.endswith(f"p[KL0..KL4] = {probs}  [input check: "
                             f"{', '.join(e['input_flags'])}]")
    assert stderr.splitlines() == [f"{bad}: error: empty file", f"{odd}: error: {got[3]['error']}"]


# ------------------------------------------------------------------ 7-8. user errors
@pytest.mark.parametrize("content", ["empty", "no_images"])
def test_folder_without_images_is_one_line_exit_2(tmp_path, capsys, content):
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    if content == "no_images":
        (d / "notes.txt").write_text("x")
        (d / ".hidden.png").write_bytes(b"x")
    out = tmp_path / "p.csv"
    rc = main(["predict", str(d), "--out", str(out), "--checkpoint",
               str(tmp_path / "never-loaded.safetensors")])
    stdout, stderr = capsys.readouterr()
    assert rc == 2 and stdout == ""
    assert stderr.splitlines() == [f"koa: error: no image files found in {d} (PNG, JPEG, "
                                   "WebP, TIFF or DICOM)"]
    assert not out.exists()


@pytest.mark.parametrize("option", ["--cam", "--report"])
def test_output_folder_under_a_file_is_one_line_exit_2(tiny_run, tmp_path, capsys, option):
    _, phantom = tiny_run
    img = _phantom_pngs(phantom, 1)[0]
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    target = blocker / "sub"
    out = tmp_path / "p.csv"
    rc = main(["predict", str(img), option, str(target), "--out", str(out), "--checkpoint",
               _ckpt(tiny_run)])
    stdout, stderr = capsys.readouterr()
    assert rc == 2 and stdout == ""
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    what = "Grad-CAM" if option == "--cam" else "report"
    assert lines[0] == f"koa: error: {target}: cannot create the {what} folder (Not a directory)"
    assert blocker.read_text() == "x"


def test_bad_output_folder_is_refused_before_the_csv_is_written(tiny_run, tmp_path, capsys):
    """A --cam folder that cannot be made is a user error found before any output: no
    header-only CSV is left behind."""
    _, phantom = tiny_run
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    out = tmp_path / "p.csv"
    rc = main(["predict", str(_phantom_pngs(phantom, 1)[0]), "--cam", str(blocker / "sub"),
               "--out", str(out), "--checkpoint", _ckpt(tiny_run)])
    assert rc == 2
    assert len(capsys.readouterr().err.splitlines()) == 1
    assert not out.exists(), f"left behind: {out.read_text()!r}"
