"""Hostile files given to `koa predict` and `koa data check`: nothing hangs, nothing is
overwritten, nothing is graded silently wrong.

Each case ends in one clear line per file (its CSV row's error and a line on stderr), the
batch goes on, no traceback appears and nothing but the named outputs is written. FIFOs
are only ever opened by a child process under a timeout, so a regression cannot hang the
suite. Memory on decompression bombs is measured by ``koa bench --bomb``, not here: these
tests check that the pixels are never decoded.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from test_dicom import _dicom

from koa_core.bench import write_png_bomb
from koa_core.cli import main
from koa_core.data import check, raster
from koa_core.data.imaging import read_image
from koa_core.errors import KoaError, printable
from koa_core.infer import backends, predict
from koa_core.infer.knee_report import KneeReport, render_report
from koa_core.infer.onnx import onnx_cache_path
from koa_core.infer.predict import Prediction, _out_stems, csv_cell


# ------------------------------------------------------------------ helpers
def _ckpt(tiny_run) -> str:
    return str(tiny_run[0] / "best.safetensors")


def _knee(tiny_run) -> np.ndarray:
    src = sorted((tiny_run[1] / "train" / "2").glob("*.png"))[0]
    return cv2.imread(str(src), cv2.IMREAD_GRAYSCALE)


def _png(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)
    return path


def _rows(path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _bomb_png(path: Path, width: int, height: int, bit_depth: int = 1, colour: int = 0,
              rows: int | None = None) -> Path:
    """A PNG of zeros declaring ``width`` x ``height`` pixels (``koa bench --bomb``'s);
    ``rows`` limits the rows actually stored (the header alone must be refused)."""
    return write_png_bomb(path, width, height, bit_depth, colour, rows)


def _no_decode(monkeypatch):
    """Make any pixel decode fail the test: a refusal must come from the header."""
    def refuse(*a, **k):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(raster.cv2, "imdecode", refuse)


def _one_line(exc_info, fragment: str) -> str:
    msg = str(exc_info.value)
    assert fragment in msg and "\n" not in msg, msg
    return msg


# ------------------------------------------------------------------ 1. non-finite DICOM
STORED = (np.arange(48 * 40).reshape(48, 40) % 4000).astype(np.uint16)


@pytest.mark.parametrize("elements, key", [
    ({"RescaleSlope": "NaN", "RescaleIntercept": 0}, "RescaleSlope"),
    ({"RescaleSlope": 1, "RescaleIntercept": "-inf"}, "RescaleIntercept"),
    ({"WindowCenter": "NaN", "WindowWidth": 100}, "WindowCenter"),
    ({"WindowCenter": 100, "WindowWidth": "inf"}, "WindowWidth"),
])
def test_non_finite_dicom_values_are_refused(tmp_path, elements, key):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns that NaN is not a valid DS
        path = _dicom(tmp_path / "bad.dcm", STORED, **elements)
    with pytest.raises(KoaError) as ei:
        read_image(path)
    _one_line(ei, f"{key} is ")
    assert "finite" in str(ei.value)
    err = check._decode(str(path))[4]  # koa data check counts it unreadable
    assert err and key in err


def test_non_finite_dicom_in_json_is_an_error_not_nan(tiny_run, tmp_path, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bad = _dicom(tmp_path / "nan.dcm", STORED, RescaleSlope="NaN", RescaleIntercept=0)
    good = _png(tmp_path / "good.png", _knee(tiny_run))
    assert main(["predict", str(good), str(bad), "--json", "--checkpoint",
                 _ckpt(tiny_run)]) == 1

    def no_constants(name):
        raise AssertionError(f"{name} in the JSON")

    out = json.loads(capsys.readouterr().out, parse_constant=no_constants)
    assert "grade" in out[0] and "RescaleSlope is nan" in out[1]["error"]


def test_dicom_without_photometric_is_read_as_monochrome2(tmp_path):
    ref = _dicom(tmp_path / "ref.dcm", STORED)
    bare = tmp_path / "bare.dcm"
    import pydicom

    ds = pydicom.dcmread(ref)
    del ds.PhotometricInterpretation
    ds.save_as(bare)
    img, meta = read_image(bare)
    assert np.array_equal(img, read_image(ref)[0]) and meta["photometric"] == "MONOCHROME2"


# ------------------------------------------------------------------ 2-3. FIFOs and devices
_RUN = "import sys; from koa_core.cli import main; sys.exit(main(sys.argv[1:]))"


def _koa(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "KOA_ENGINE": "torch"}
    return subprocess.run([sys.executable, "-c", _RUN, *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


@pytest.mark.skipif(not hasattr(os, "mkfifo") or not os.path.exists("/dev/zero"),
                    reason="needs FIFOs and /dev/zero")
def test_fifos_and_devices_neither_hang_nor_stop_the_batch(tiny_run, phantom_copy, tmp_path):
    scans = tmp_path / "scans"
    good = _png(scans / "good.png", _knee(tiny_run))
    os.mkfifo(scans / "x.png")  # a FIFO with an image's name
    os.mkfifo(scans / "scan001")  # a suffix-less FIFO: DICOM is sniffed, so it is looked at
    os.symlink("/dev/zero", scans / "zero.png")  # reads without end
    out = tmp_path / "grades.csv"
    r = _koa("predict", str(scans), str(scans / "x.png"), "--out", str(out),
             "--checkpoint", _ckpt(tiny_run), "--quiet")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    rows = {Path(row["path"]).name: row for row in _rows(out)}
    assert rows["good.png"]["grade"] and not rows["good.png"]["error"]
    assert rows["x.png"]["error"] == "a FIFO, not a regular file; not read"
    assert rows["zero.png"]["error"] == "a character device, not a regular file; not read"
    assert "scan001" not in rows  # not an image: skipped, never opened
    assert sum(": error: " in line for line in r.stderr.splitlines()) == 3  # x.png twice
    assert good.exists() and sorted(p.name for p in scans.iterdir()) == [
        "good.png", "scan001", "x.png", "zero.png"]

    grade = phantom_copy / "val" / "1"
    os.mkfifo(grade / "9000001L.png")
    os.symlink("/dev/zero", grade / "9000001R.png")
    r = _koa("data", "check", str(phantom_copy), "--workers", "2")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "unreadable images: 2" in r.stdout
    assert "a FIFO, not a regular file" in r.stdout and "a character device" in r.stdout


def test_an_oversized_file_is_not_read(tmp_path, monkeypatch):
    path = tmp_path / "huge.png"
    path.write_bytes(b"\0" * 4096)
    with pytest.raises(KoaError) as ei:
        raster.read_bytes(path, limit=1024)
    _one_line(ei, "4,096 bytes is larger than the 1,024-byte limit")


# ------------------------------------------------------------------ 4. decompression bombs
def test_bombs_are_refused_from_their_header(tmp_path, monkeypatch):
    one_bit = _bomb_png(tmp_path / "bomb1.png", 30_000, 30_000)  # ~110 KB, 900 Mpixel
    rgba16 = _bomb_png(tmp_path / "bomb16.png", 9_000, 9_000, 16, 6, rows=64)
    assert one_bit.stat().st_size < 200_000
    _no_decode(monkeypatch)
    for path, size in ((one_bit, "900,000,000 pixels"), (rgba16, "9000x9000 pixels")):
        with pytest.raises(KoaError) as ei:
            read_image(path)
        _one_line(ei, f"{size} is larger than the 64,000,000-pixel limit")
        assert size in check._decode(str(path))[4]  # koa data check: the same line


def test_a_legal_size_that_decodes_too_large_is_refused_from_its_header(tmp_path,
                                                                        monkeypatch):
    """48 M pixels (under the pixel limit) of 16-bit RGBA would decode to 366 MiB."""
    big = _bomb_png(tmp_path / "big16.png", 8_000, 6_000, 16, 6, rows=64)
    _no_decode(monkeypatch)
    with pytest.raises(KoaError) as ei:
        read_image(big)
    _one_line(ei, "8000x6000 pixels would decode to 366 MiB, more than the 256 MiB limit")
    grey = _png(tmp_path / "grey16.png", np.full((300, 200), 30000, np.uint16))
    monkeypatch.undo()
    assert read_image(grey)[0].shape == (300, 200)  # a 16-bit grey knee still reads


def test_multi_frame_images_are_refused(tmp_path):
    frames = [Image.fromarray(np.full((32, 32), v, np.uint8)) for v in (10, 200)]
    for name in ("pages.tif", "anim.png"):
        frames[0].save(tmp_path / name, save_all=True, append_images=frames[1:])
        with pytest.raises(KoaError) as ei:
            read_image(tmp_path / name)
        _one_line(ei, "2 frames")
    frames[0].save(tmp_path / "one.png")
    assert read_image(tmp_path / "one.png")[0].shape == (32, 32)


def test_a_damaged_png_is_refused_without_libpng_noise(tmp_path, capfd):
    good = _png(tmp_path / "good.png", np.tile(np.arange(64, dtype=np.uint8), (64, 1)))
    data = good.read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "crc.png").write_bytes(data[:40] + bytes([data[40] ^ 0xFF]) + data[41:])
    for name in ("cut.png", "crc.png"):
        with pytest.raises(KoaError) as ei:
            read_image(tmp_path / name)
        _one_line(ei, "truncated or corrupt")
    assert capfd.readouterr().err == ""  # libpng writes to the file descriptor itself


# ------------------------------------------------------------------ 5-6. outputs
def test_an_output_that_is_an_input_is_refused(tmp_path, capsys):
    victim = _png(tmp_path / "victim.webp", np.full((64, 64), 90, np.uint8))
    before = victim.read_bytes()
    assert main(["predict", str(victim), "--out", str(victim)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "one of the input files" in err[0]
    assert victim.read_bytes() == before
    assert main(["predict", ""]) == 2
    assert "empty file name" in capsys.readouterr().err


def test_output_names_are_unique_per_input():
    files = ["x/a.webp", "y/a.webp", "y/a-2.webp", "z/A.png", "b/" + "L" * 250 + ".png"]
    stems = _out_stems(files)
    assert len({s.casefold() for s in stems}) == len(files)
    assert stems[2] == "a-2" and all(len(s) < 80 for s in stems)
    assert _out_stems(["x/a.webp", "y/b.webp"]) == ["a", "b"]  # plain names when unique


def test_reports_cams_and_csv_are_distinct_and_never_inside_the_input(tiny_run, tmp_path,
                                                                      capsys):
    knee = _knee(tiny_run)
    scans = tmp_path / "scans"
    files = [_png(scans / "x" / "a.png", knee), _png(scans / "y" / "a.png", knee[::-1].copy()),
             _png(scans / "y" / "a-2.png", knee[:, ::-1].copy()),
             _png(scans / ("L" * 240 + ".png"), knee)]  # legal, but too long with a suffix
    outs = tmp_path / "outs"
    outs.mkdir()
    args = ["predict", str(scans), "--checkpoint", _ckpt(tiny_run), "--quiet",
            "--out", str(outs / "grades.csv"), "--report", str(outs / "report"),
            "--cam", str(outs / "cams")]
    for _ in range(2):  # the second run replaces the first one's pictures
        assert main(args) == 0
        assert "Traceback" not in capsys.readouterr().err
        rows = _rows(outs / "grades.csv")
        assert sorted(r["path"] for r in rows) == sorted(map(str, files))
        assert all(r["grade"] and not r["error"] for r in rows)
    pictures = sorted((outs / "report").glob("*_report.png"))
    assert len(pictures) == 4 and len(list((outs / "cams").glob("*.png"))) == 8
    index = (outs / "report" / "index.html").read_text()
    assert all(p.name in index for p in pictures)
    assert main([*args[:5], "--report", str(scans / "report")]) == 2  # among the inputs
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "inside the input folder" in err[0]
    assert not (scans / "report").exists()


def test_a_picture_that_cannot_be_written_fails_that_file_only(tiny_run, tmp_path, capsys,
                                                               monkeypatch):
    knee = _knee(tiny_run)
    files = [_png(tmp_path / "in" / f"{k}.png", knee) for k in "abc"]
    real = predict.render_report

    def flaky(report, path, **kw):
        if Path(path).name.startswith("b"):
            raise OSError(36, "File name too long")
        return real(report, path, **kw)

    monkeypatch.setattr(predict, "render_report", flaky)
    out = tmp_path / "g.csv"
    assert main(["predict", *map(str, files), "--checkpoint", _ckpt(tiny_run), "--quiet",
                 "--out", str(out), "--report", str(tmp_path / "rep")]) == 1
    rows = _rows(out)
    assert [bool(r["error"]) for r in rows] == [False, True, False]
    assert "File name too long" in rows[1]["error"] and rows[1]["grade"]
    assert (tmp_path / "rep" / "index.html").exists()


def test_an_interrupted_report_run_leaves_an_index(tiny_run, tmp_path, capsys, monkeypatch):
    knee = _knee(tiny_run)
    files = [_png(tmp_path / "in" / f"{k}.png", knee) for k in "abc"]
    real = predict.render_report

    def interrupted(report, path, **kw):
        if Path(path).name.startswith("b"):
            raise KeyboardInterrupt
        return real(report, path, **kw)

    monkeypatch.setattr(predict, "render_report", interrupted)
    rep = tmp_path / "rep"
    assert main(["predict", *map(str, files), "--checkpoint", _ckpt(tiny_run), "--quiet",
                 "--report", str(rep)]) == 130
    index = (rep / "index.html").read_text()
    assert "a_report.png" in index and "c.png" not in index


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_disk_names_the_csv(tiny_run, tmp_path, capsys):
    good = _png(tmp_path / "good.png", _knee(tiny_run))
    assert main(["predict", str(good), "--out", "/dev/full", "--checkpoint",
                 _ckpt(tiny_run), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("koa: error: /dev/full: cannot write")


# ------------------------------------------------------------------ 7. forged cells and lines
FORMULAS = ["=cmd|' -C calc'!A0.png", "+SUM(1+1).png", "@x.png", "-2+3.png"]


def test_csv_cells_cannot_run_as_formulas_and_names_cannot_forge_lines(tiny_run, tmp_path,
                                                                        capsys, monkeypatch):
    knee = _knee(tiny_run)
    forged = "evil\nfake.png: KL4 (severe)  p[KL0..KL4] = 0 0 0 0 1\x1b[2K.png"
    names = FORMULAS + [forged]
    for name in names:
        _png(tmp_path / name, knee)
    monkeypatch.chdir(tmp_path)  # names as a user types them: the cell starts with them
    out = tmp_path / "g.csv"
    assert main(["predict", "--out", str(out), "--checkpoint", _ckpt(tiny_run), "--quiet",
                 "--", *names]) == 0
    cells = [r["path"] for r in _rows(out)]
    assert cells[:4] == ["'" + n for n in FORMULAS] and cells[4] == forged
    capsys.readouterr()
    assert main(["predict", "--checkpoint", _ckpt(tiny_run), "--", *names]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(names)  # the newline in the name printed no line of its own
    assert lines[-1].startswith("evil\\nfake.png: KL4 (severe)") and "\x1b" not in lines[-1]
    assert lines[-1].count(": KL") == 2  # the forged text, escaped, then the real grade


def test_csv_cell_and_printable_rules():
    for text in ("=1+1", "+1", "-1", "@A1", "\t=1", "\r=1"):
        assert csv_cell(text) == "'" + text
    assert csv_cell("knee.png") == "knee.png" and csv_cell(None) is None
    p = Prediction("a\nb.png", error="c\rd")
    assert p.line() == "a\\nb.png: error: c\\rd" and p.row()["error"] == "c\rd"
    assert printable("膝 é.png") == "膝 é.png"


# ------------------------------------------------------------------ 8. the smaller ones
def test_a_corrupt_cached_onnx_export_is_rebuilt_once(tiny_run, tiny_onnx, tmp_path, capsys,
                                                      monkeypatch):
    pytest.importorskip("onnxruntime")
    import shutil

    ckpt = _ckpt(tiny_run)
    target = onnx_cache_path(ckpt, tmp_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"not an onnx model")
    exports = []

    def export(checkpoint, out):  # the session's real export of the same checkpoint
        exports.append(out)
        return Path(shutil.copy(tiny_onnx, out))

    monkeypatch.setattr(backends, "export_onnx", export)
    backend = backends.load_backend(ckpt, "onnxruntime", cache_dir=tmp_path)
    assert backend.engine == "onnxruntime" and target.stat().st_size > 1000
    assert len(exports) == 1 and "exporting it again" in capsys.readouterr().err


def test_a_sidecar_that_is_not_an_object_is_one_line(tiny_run, tmp_path, capsys):
    ckpt = tmp_path / "m.safetensors"
    ckpt.write_bytes(Path(_ckpt(tiny_run)).read_bytes())
    ckpt.with_suffix(".json").write_text("[1, 2]")
    good = _png(tmp_path / "good.png", _knee(tiny_run))
    assert main(["predict", str(good), "--checkpoint", str(ckpt)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a JSON object expected, found a JSON list" in err[0]


def test_a_cjk_name_draws_without_glyph_warnings(tmp_path):
    img = np.full((64, 64), 120, np.uint8)
    cams = {"raw": np.zeros((64, 64), np.float32), "clahe": np.zeros((64, 64), np.float32)}
    report = KneeReport(name="膝のX線.png", image=img, probabilities=[0.2] * 5, grade=0,
                        gate=[0.5, 0.5], cams=cams, clahe_image=img)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        render_report(report, tmp_path / "r.png")
    assert not [w for w in seen if "missing from" in str(w.message)]
    assert (tmp_path / "r.png").stat().st_size > 0


def test_a_sidecar_that_is_a_fifo_is_one_line_and_never_opened(tiny_run, tmp_path, capsys):
    ckpt = tmp_path / "m.safetensors"
    ckpt.write_bytes(Path(_ckpt(tiny_run)).read_bytes())
    os.mkfifo(ckpt.with_suffix(".json"))  # opening it for reading would block for ever
    good = _png(tmp_path / "good.png", _knee(tiny_run))
    assert main(["predict", str(good), "--checkpoint", str(ckpt)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a regular file" in err[0]


def test_a_fatal_error_naming_a_file_stays_one_line(tmp_path, capsys):
    missing = tmp_path / "a\nkoa: forged line.safetensors"
    assert main(["evaluate", "--checkpoint", str(missing), "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\\n" in err and err.startswith("koa: error: ")
