"""Hostile outputs given to `koa predict` and `koa export`: nothing is clobbered, nothing
hangs, one run writes a file at a time, and what the formats cannot hold is escaped.

The outputs' side of tests/infer/test_hostile.py: an output that is an input under another
name (a hard link, the checkpoint's sidecar), a CSV inside an output folder, an export over
its own source, two runs on one CSV, outputs inside a walked input folder, a FIFO where an
output goes, the mode of published files, names that are not UTF-8, symlinked subfolders
and non-finite DICOM numbers in JSON. Each refusal is one line before anything is written.
FIFOs are only ever opened by a child process under a timeout, so a regression cannot hang
the suite.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import stat
import sys
import warnings
from pathlib import Path

import cv2
import pytest
from test_dicom import _dicom
from test_hostile import STORED, _ckpt, _knee, _koa, _png, _rows

from koa_core.cli import main
from koa_core.infer import backends
from koa_core.infer.predict import Prediction


def _err_lines(capsys) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


def _refused(capsys, *fragments: str) -> str:
    err = _err_lines(capsys)
    assert len(err) == 1 and err[0].startswith("koa: error: "), err
    assert all(f in err[0] for f in fragments), err[0]
    return err[0]


# ------------------------------------------------------------------ 1. the same file
def test_an_output_hard_linked_to_an_input_is_refused(tiny_run, tmp_path, capsys):
    victim = _png(tmp_path / "in" / "knee.png", _knee(tiny_run))
    before = victim.read_bytes()
    hard = tmp_path / "hard.csv"
    os.link(victim, hard)  # another name for the image: same device and inode
    assert main(["predict", str(victim), "--out", str(hard), "--checkpoint", _ckpt(tiny_run),
                 "--quiet"]) == 2
    _refused(capsys, str(hard), "one of the input files", str(victim))
    assert victim.read_bytes() == before
    rep = tmp_path / "rep"  # a picture's name hard-linked to the input: replaced, not written
    rep.mkdir()
    os.link(victim, rep / "knee_report.png")
    assert main(["predict", str(victim), "--report", str(rep), "--checkpoint",
                 _ckpt(tiny_run)]) == 0
    assert victim.read_bytes() == before and not (rep / "knee_report.png").samefile(victim)
    capsys.readouterr()

    ckpt = Path(shutil.copy(_ckpt(tiny_run), tmp_path / "m.safetensors"))
    shutil.copy(tiny_run[0] / "best.json", tmp_path / "m.json")
    for out in (ckpt, ckpt.with_suffix(".json")):  # the checkpoint is an input too
        data = out.read_bytes()
        assert main(["predict", str(victim), "--out", str(out), "--checkpoint", str(ckpt),
                     "--quiet"]) == 2
        _refused(capsys, "one of the input files")
        assert out.read_bytes() == data


# ------------------------------------------------------------------ 2. inside an output folder
@pytest.mark.parametrize("option, folder, name", [("--report", "rep", "index.html"),
                                                  ("--cam", "cams", "knee_raw_cam.png")])
def test_a_csv_inside_an_output_folder_is_refused(tiny_run, tmp_path, capsys, option, folder,
                                                  name):
    knee = _png(tmp_path / "in" / "knee.png", _knee(tiny_run))
    out_dir = tmp_path / folder
    out_dir.mkdir()
    csv_path = out_dir / name  # the report's own index, or a CAM picture's name
    csv_path.write_text("kept\n")
    assert main(["predict", str(knee), "--out", str(csv_path), option, str(out_dir),
                 "--checkpoint", _ckpt(tiny_run), "--quiet"]) == 2
    msg = _refused(capsys, str(csv_path), "inside the", str(out_dir))
    assert "rows in" not in msg
    assert csv_path.read_text() == "kept\n" and os.listdir(out_dir) == [name]


# ------------------------------------------------------------------ 3. export over its source
def test_export_never_replaces_its_source(tiny_run, tmp_path, capsys, monkeypatch, tree_hash):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("best.safetensors", "best.json", "config.yaml", "history.csv"):
        shutil.copy(tiny_run[0] / name, run / name)
    exports = []

    def export(checkpoint, out, calibration=None):  # what the real export ends with
        exports.append(out)
        Path(out).write_bytes(b"an ONNX file")
        return Path(out)

    monkeypatch.setattr(backends, "export_onnx", export)
    ckpt = run / "best.safetensors"
    before = tree_hash(run)
    for args in (["--onnx", str(ckpt), "--out", str(ckpt)],
                 ["--onnx", str(ckpt), "--out", str(run / "best.json")],  # its sidecar
                 ["--onnx", str(run), "--out", str(run / "history.csv")],  # a file of the run
                 [str(run), "--dataset", "phantom", "--out", str(ckpt)],
                 [str(run), "--dataset", "phantom", "--out", str(run / "best.json")]):
        assert main(["export", *args]) == 2, args
        _refused(capsys, "the source")
    assert tree_hash(run) == before and exports == []


# ------------------------------------------------------------------ 4. one writer per CSV
def test_a_second_run_on_the_same_csv_is_refused(tiny_run, tmp_path, capsys):
    """The first run is this process holding the CSV's lock as a running `koa predict`
    does (the file itself, flock-ed); the second run must leave its rows alone."""
    knee = _png(tmp_path / "in" / "knee.png", _knee(tiny_run))
    out = tmp_path / "grades.csv"
    out.write_text("path,grade\nfirst-run.png,2\n")
    args = ["predict", str(knee), "--out", str(out), "--checkpoint", _ckpt(tiny_run),
            "--quiet"]
    with open(out, "a") as first:
        fcntl.flock(first.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert main(args) == 2
        _refused(capsys, str(out), "another process is writing it", f"pid {os.getpid()}")
        assert out.read_text() == "path,grade\nfirst-run.png,2\n"
    assert main(args) == 0  # the lock goes with its holder: nothing stale is left
    assert [r["path"] for r in _rows(out)] == [str(knee)]
    capsys.readouterr()
    rep = tmp_path / "rep"  # a report folder is one run's too: the folder itself locked
    rep.mkdir()
    fd = os.open(rep, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert main(["predict", str(knee), "--report", str(rep), "--checkpoint",
                     _ckpt(tiny_run)]) == 2
        _refused(capsys, str(rep), "another process is writing report pictures there",
                 f"pid {os.getpid()}")
    finally:
        os.close(fd)
    assert os.listdir(rep) == []


# ------------------------------------------------------------------ 5. among the inputs
@pytest.mark.parametrize("option, name", [("--report", "pictures"), ("--cam", "cams"),
                                          ("--out", "grades.csv")])
def test_outputs_inside_a_walked_input_folder_are_refused(tiny_run, tmp_path, capsys,
                                                          tree_hash, option, name):
    scans = tmp_path / "scans"
    _png(scans / "a.png", _knee(tiny_run))
    (scans / "sub").mkdir()
    before = tree_hash(scans)
    assert main(["predict", str(scans), option, str(scans / name), "--checkpoint",
                 _ckpt(tiny_run), "--quiet"]) == 2
    _refused(capsys, str(scans / name), "inside the input folder", str(scans))
    assert tree_hash(scans) == before


# ------------------------------------------------------------------ 6. FIFOs as outputs
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_as_an_output_is_refused_without_opening_it(tiny_run, tmp_path):
    good = _png(tmp_path / "in" / "good.png", _knee(tiny_run))
    fifo = tmp_path / "grades.csv"
    os.mkfifo(fifo)  # opening it for writing would block for ever
    rep = tmp_path / "rep"
    rep.mkdir()
    os.mkfifo(rep / "index.html")
    for args in (["--out", str(fifo)], ["--report", str(rep)]):
        r = _koa("predict", str(good), *args, "--checkpoint", _ckpt(tiny_run), "--quiet",
                 timeout=60)
        err = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(err) == 1, r.stderr
        assert "a FIFO, not a regular file" in err[0]
    assert "index.html" in err[0] and os.listdir(rep) == ["index.html"]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


# ------------------------------------------------------------------ 7. the umask's mode
def _modes(files: list[Path]) -> set[str]:
    return {oct(stat.S_IMODE(p.stat().st_mode)) for p in files}


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_exported_models_get_the_umask_mode(tiny_run, tmp_path, monkeypatch, umask_022):
    """safetensors and the ONNX writer (tempfile.mkstemp) both create 0600 files."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from koa_core.infer import onnx as koa_onnx

    def export(checkpoint, out, calibration=None):  # the real writer, a one-node model
        x = helper.make_tensor_value_info("views", TensorProto.FLOAT, [1])
        y = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [1])
        graph = helper.make_graph([helper.make_node("Identity", ["views"], ["probabilities"])],
                                  "g", [x], [y])
        return koa_onnx._atomic_save(helper.make_model(graph), Path(out))

    monkeypatch.setattr(backends, "export_onnx", export)
    run = tmp_path / "run"
    run.mkdir()
    for name in ("best.safetensors", "best.json", "config.yaml", "history.csv"):
        shutil.copy(tiny_run[0] / name, run / name)
    pub = tmp_path / "pub"
    assert main(["export", "--onnx", str(run), "--out", str(pub / "m.onnx")]) == 0
    assert main(["export", str(run), "--dataset", "phantom", "--out",
                 str(pub / "m.safetensors")]) == 0
    assert onnx.load(str(pub / "m.onnx")).graph.node[0].op_type == "Identity"
    assert _modes([pub / "m.onnx", pub / "m.safetensors", pub / "m.json"]) == {"0o644"}


def test_predict_outputs_get_the_umask_mode(tiny_run, tmp_path, umask_022):
    """Pictures and the index are drawn in a private 0700 folder and renamed into place:
    they must still get the umask's mode, as the CSV does."""
    knee = _png(tmp_path / "in" / "knee.png", _knee(tiny_run))
    pub = tmp_path / "pub"
    pub.mkdir()
    assert main(["predict", str(knee), "--checkpoint", _ckpt(tiny_run), "--quiet",
                 "--out", str(pub / "g.csv"), "--report", str(pub / "rep"),
                 "--cam", str(pub / "cams")]) == 0
    files = [pub / "g.csv", pub / "rep" / "index.html", pub / "rep" / "knee_report.png",
             *sorted((pub / "cams").glob("*.png"))]
    assert len(files) == 5 and _modes(files) == {"0o644"}


# ------------------------------------------------------------------ 8. names not in UTF-8
@pytest.mark.skipif(sys.platform == "darwin", reason="file names there must be UTF-8")
def test_a_name_that_is_not_utf8_is_graded_and_escaped(tiny_run, tmp_path, capsys):
    scans = tmp_path / "scans"
    scans.mkdir()
    odd = scans / os.fsdecode(b"knee-\xff.png")  # a lone surrogate in Python's str
    odd.write_bytes(cv2.imencode(".png", _knee(tiny_run))[1].tobytes())
    shown = f"{scans}/knee-\\xff.png"
    out, rep = tmp_path / "g.csv", tmp_path / "rep"
    assert main(["predict", str(scans), "--out", str(out), "--report", str(rep), "--json",
                 "--checkpoint", _ckpt(tiny_run), "--quiet"]) == 0
    rows = _rows(out)
    assert [r["path"] for r in rows] == [shown] and rows[0]["grade"] and not rows[0]["error"]
    index = (rep / "index.html").read_text(encoding="utf-8")
    assert "knee-\\xff.png" in index and len(list(rep.glob("*_report.png"))) == 1
    first = json.loads(capsys.readouterr().out)[0]
    assert first["path"] == shown and "grade" in first
    assert main(["predict", str(scans), "--checkpoint", _ckpt(tiny_run)]) == 0
    assert capsys.readouterr().out.startswith(f"{shown}: KL")


# ------------------------------------------------------------------ 9. symlinked subfolders
def test_a_symlinked_subfolder_is_followed_once(tiny_run, tmp_path, capsys):
    scans = tmp_path / "scans"
    _png(scans / "a.png", _knee(tiny_run))
    _png(tmp_path / "elsewhere" / "b.png", _knee(tiny_run))
    os.symlink(tmp_path / "elsewhere", scans / "linked")
    os.symlink(scans, scans / "loop")  # back to the top
    os.symlink(tmp_path / "elsewhere", scans / "twice")  # the same folder by a second name
    out = tmp_path / "g.csv"
    assert main(["predict", str(scans), "--out", str(out), "--checkpoint", _ckpt(tiny_run),
                 "--quiet"]) == 0
    assert [r["path"] for r in _rows(out)] == [str(scans / "a.png"),
                                               str(scans / "linked" / "b.png")]
    summary = _err_lines(capsys)[-1]
    assert summary.startswith("graded 2 of 2 file(s)")
    assert "followed 1 symlinked folder(s)" in summary
    assert "2 folder(s) already walked" in summary


# ------------------------------------------------------------------ 10. JSON without NaN
def test_json_holds_no_nan_for_a_non_finite_pixel_spacing(tiny_run, tmp_path, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns that NaN is not a valid DS
        nan = _dicom(tmp_path / "nan.dcm", STORED, PixelSpacing=["NaN", "NaN"])
        inf = _dicom(tmp_path / "inf.dcm", STORED, ImagerPixelSpacing=["inf", "0.1"])
    assert main(["predict", str(nan), str(inf), "--json", "--checkpoint",
                 _ckpt(tiny_run)]) == 0

    def no_constants(name):
        raise AssertionError(f"{name} in the JSON")

    out = json.loads(capsys.readouterr().out, parse_constant=no_constants)
    assert len(out) == 2 and all("grade" in o for o in out)
    spacing = [v for o in out for v in o.get("dicom", {}).get("pixel_spacing_mm") or []]
    assert all(v is None or math.isfinite(v) for v in spacing)
    p = Prediction("x.dcm", 1, [float("nan"), 0.5, float("inf"), 0.0, 0.0],
                   dicom={"pixel_spacing_mm": [float("nan"), -float("inf")]})
    d = p.to_dict()
    assert d["probabilities"][:3] == [None, 0.5, None]
    assert d["dicom"]["pixel_spacing_mm"] == [None, None]
