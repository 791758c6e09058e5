"""Tests for the data commands of the ``koa`` CLI (synth, data check, data stats):
in-process through ``koa_core.cli.main`` and, for exit codes and the one-line error
contract, as real subprocesses."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from koa_core.cli import build_parser, main


def _koa(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _one_line_error(err: str) -> None:
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("koa: error: "), err


def _koa_subprocess(tmp_path, *argv, cache=None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["KOA_CACHE_DIR"] = str(cache or tmp_path / "subprocess_cache")
    env.pop("PYTHONWARNINGS", None)
    return subprocess.run([sys.executable, "-m", "koa_core.cli", *map(str, argv)],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120,
                          check=False)


def _truncate_one(root: Path) -> Path:
    bad = min((root / "train" / "2").glob("*.png"))
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    return bad


def _leak_one(root: Path) -> str:
    src = min((root / "train" / "0").glob("*.png"))
    shutil.copy2(src, root / "test" / "0" / src.name)
    return src.stem[:7]


# ------------------------------------------------------------------ help, version, options
def test_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as ei:
        main(["--help"])
    assert ei.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: koa")
    for cmd in ("synth", "data"):
        assert cmd in out


@pytest.mark.parametrize("argv", [["data", "--help"], ["data", "check", "--help"],
                                  ["data", "stats", "--help"], ["synth", "--help"]])
def test_sub_help_exits_zero(capsys, argv):
    with pytest.raises(SystemExit) as ei:
        main(argv)
    assert ei.value.code == 0
    assert "usage: koa" in capsys.readouterr().out


def test_version(capsys):
    from koa_core import __version__

    with pytest.raises(SystemExit) as ei:
        main(["--version"])
    assert ei.value.code == 0
    assert capsys.readouterr().out.strip() == f"koa_core {__version__}"


@pytest.mark.parametrize("argv", [
    [],
    ["nosuchcommand"],
    ["data"],
    ["data", "check"],
    ["data", "check", "ROOT", "--bogus"],
    ["data", "stats", "ROOT", "--workers", "many"],
    ["synth"],
    ["synth", "OUT", "--proportions", "weird"],
    ["synth", "OUT", "--per-class", "ten"],
])
def test_bad_options_are_one_line_exit_2(capsys, tmp_path, phantom_root, argv):
    argv = [str(phantom_root) if a == "ROOT" else str(tmp_path / "o") if a == "OUT" else a
            for a in argv]
    rc, out, err = _koa(capsys, *argv)
    assert rc == 2
    _one_line_error(err)
    assert out == ""
    assert not (tmp_path / "o").exists()


def test_parser_builds_with_data_commands():
    p = build_parser()
    assert p.prog == "koa"
    args = p.parse_args(["data", "check", "R", "--allow-leakage", "--seed", "3"])
    assert args.root == "R" and args.allow_leakage and args.seed == 3


# ------------------------------------------------------------------ synth
def test_synth_writes_layout(capsys, tmp_path):
    out_dir = tmp_path / "ph"
    rc, out, err = _koa(capsys, "synth", out_dir, "--per-class", 10, "--seed", 1, "--size", 64)
    assert rc == 0, err
    assert err == ""
    assert "wrote 50 images" in out and str(out_dir) in out
    pngs = sorted(out_dir.glob("*/*/*.png"))
    assert len(pngs) == 50
    assert {p.parent.parent.name for p in pngs} == {"train", "val", "test"}
    assert {p.parent.name for p in pngs} == {str(g) for g in range(5)}
    assert all(re.fullmatch(r"1\d{6}[LR]\.png", p.name) for p in pngs)
    for g in range(5):
        assert len(list(out_dir.glob(f"*/{g}/*.png"))) == 10
    # the printed per-split counts match the files
    for split in ("train", "val", "test"):
        line = next(ln for ln in out.splitlines() if ln.strip().startswith(split))
        assert sum(int(x.split("=")[1]) for x in line.split()[1:]) == \
            len(list((out_dir / split).glob("*/*.png")))
    import cv2

    img = cv2.imread(str(pngs[0]), cv2.IMREAD_UNCHANGED)
    assert img.shape == (64, 64) and img.dtype.name == "uint8"


def test_synth_same_seed_same_bytes(capsys, tmp_path):
    for name in ("a", "b"):
        assert _koa(capsys, "synth", tmp_path / name, "--per-class", 3, "--size", 32,
                    "--seed", 4)[0] == 0
    fa = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    fb = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.png"))
    assert fa == fb
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in fa)


def test_synth_into_nonempty_refused(capsys, tmp_path, tree_hash):
    out_dir = tmp_path / "ph"
    assert _koa(capsys, "synth", out_dir, "--per-class", 2, "--size", 32)[0] == 0
    before = tree_hash(out_dir)
    rc, _, err = _koa(capsys, "synth", out_dir, "--per-class", 2, "--size", 32)
    assert rc == 2
    _one_line_error(err)
    assert str(out_dir) in err and "not empty" in err
    assert tree_hash(out_dir) == before


def test_synth_into_empty_existing_folder_ok(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    assert _koa(capsys, "synth", tmp_path / "empty", "--per-class", 1, "--size", 32)[0] == 0


@pytest.mark.parametrize("argv, fragment", [
    (["--per-class", "0"], "--per-class"),
    (["--size", "16"], "--size"),
])
def test_synth_bad_values(capsys, tmp_path, argv, fragment):
    rc, _, err = _koa(capsys, "synth", tmp_path / "o", *argv)
    assert rc == 2
    _one_line_error(err)
    assert fragment in err
    assert not (tmp_path / "o").exists()


def test_synth_unwritable_out_is_one_line(capsys, tmp_path):
    (tmp_path / "file").write_text("x")
    rc, _, err = _koa(capsys, "synth", tmp_path / "file" / "sub", "--per-class", 1,
                      "--size", 32)
    assert rc == 2
    _one_line_error(err)


# ------------------------------------------------------------------ data check / stats
def test_data_check_phantom(capsys, phantom_root, tree_hash, isolated_cache):
    before = tree_hash(phantom_root)
    rc, out, err = _koa(capsys, "data", "check", phantom_root, "--workers", 2)
    assert rc == 0, out + err
    assert err == ""
    assert tree_hash(phantom_root) == before
    assert f"dataset: {phantom_root} (split layout, 60 images)" in out
    from koa_core.data.index import discover

    counts = discover(phantom_root).counts()
    rows = {ln.split()[0]: ln.split()[1:] for ln in out.splitlines()
            if ln.split() and ln.split()[0] in ("train", "val", "test", "all")}
    assert set(rows) == {"train", "val", "test", "all"}
    for split, c in counts.items():
        assert [int(x) for x in rows[split][:6]] == [c[g] for g in range(5)] + [sum(c.values())]
    assert [int(x) for x in rows["all"][:6]] == [12] * 5 + [60]
    assert "sizes: 64x64 (60)" in out
    assert "formats: 8-bit gray (60)" in out
    assert "patients in more than one split: 0" in out
    assert "unreadable images: 0" in out
    assert out.rstrip().endswith("usable: yes")
    assert not isolated_cache.exists() or not any(isolated_cache.rglob("*"))  # split layout


def test_data_stats_json(capsys, phantom_root, tree_hash, isolated_cache):
    before = tree_hash(phantom_root)
    rc, out, err = _koa(capsys, "data", "stats", phantom_root, "--json", "--workers", 1)
    assert rc == 0, err
    d = json.loads(out)
    assert tree_hash(phantom_root) == before
    from koa_core.data.index import discover

    idx = discover(phantom_root)
    assert d["images"] == 60 and d["layout"] == "split" and d["root"] == str(phantom_root)
    assert d["counts"] == {s: {str(g): n for g, n in c.items()} for s, c in idx.counts().items()}
    assert d["patients"] == idx.patients()
    assert d["leaking_patients"] == {} and d["unreadable"] == [] and d["problems"] == []
    assert d["sizes"] == {"64x64": 60}
    assert set(d["intensity_by_grade"]) == {str(g) for g in range(5)}
    assert all(v["n"] == 12 for v in d["intensity_by_grade"].values())


def test_data_stats_plain(capsys, phantom_root):
    rc, out, _ = _koa(capsys, "data", "stats", phantom_root)
    assert rc == 0
    assert "images: 60" in out.splitlines()


@pytest.mark.parametrize("cmd", ["check", "stats"])
def test_data_missing_folder_exit_2(capsys, tmp_path, cmd):
    rc, _, err = _koa(capsys, "data", cmd, tmp_path / "nope")
    assert rc == 2
    _one_line_error(err)
    assert str(tmp_path / "nope") in err and "no such folder" in err


def test_data_check_not_a_dataset_exit_2(capsys, tmp_path):
    (tmp_path / "stuff").mkdir()
    rc, _, err = _koa(capsys, "data", "check", tmp_path)
    assert rc == 2
    _one_line_error(err)
    assert "no dataset found" in err


def test_data_check_workers_zero_is_one_line(capsys, phantom_root):
    rc, _, err = _koa(capsys, "data", "check", phantom_root, "--workers", 0)
    assert rc == 2
    _one_line_error(err)


def test_data_check_unreadable_image_exit_1(capsys, phantom_copy, tree_hash):
    bad = _truncate_one(phantom_copy)
    (phantom_copy / "val" / "1" / "1999999L.png").write_text("not a png")
    before = tree_hash(phantom_copy)
    rc, out, err = _koa(capsys, "data", "check", phantom_copy)
    assert rc == 1
    assert "Traceback" not in err
    assert str(bad) in out
    assert str(phantom_copy / "val" / "1" / "1999999L.png") in out
    assert "unreadable images: 2" in out
    assert "usable: NO" in out and "2 unreadable image(s)" in out
    assert tree_hash(phantom_copy) == before
    rc, out, _ = _koa(capsys, "data", "stats", phantom_copy, "--json")
    assert rc == 0  # stats reports, it does not judge
    d = json.loads(out)
    assert any(str(bad) in u for u in d["unreadable"]) and len(d["unreadable"]) == 2


def test_data_check_leak_exit_1_unless_allowed(capsys, phantom_copy, tree_hash):
    pid = _leak_one(phantom_copy)
    before = tree_hash(phantom_copy)
    rc, out, err = _koa(capsys, "data", "check", phantom_copy)
    assert rc == 1, err
    assert f"patients in more than one split: 1 (e.g. {pid})" in out
    assert "identical files across splits: 1" in out
    assert "usable: NO" in out
    assert tree_hash(phantom_copy) == before


def test_data_check_allow_leakage(capsys, phantom_copy, tree_hash):
    # the other knee (not an identical file) in another split: only patient leakage
    src = min((phantom_copy / "train" / "3").glob("*.png"))
    other = "R" if src.stem.endswith("L") else "L"
    shutil.copy2(min((phantom_copy / "train" / "4").glob("*.png")),
                 phantom_copy / "val" / "3" / f"{src.stem[:7]}{other}.png")
    # the copied bytes also exist in train/4: remove that original so no identical file
    # remains across splits
    min((phantom_copy / "train" / "4").glob("*.png")).unlink()
    before = tree_hash(phantom_copy)
    rc, out, _ = _koa(capsys, "data", "check", phantom_copy)
    assert rc == 1 and "usable: NO" in out and "1 patient(s) in more than one split" in out
    rc, out, _ = _koa(capsys, "data", "check", phantom_copy, "--allow-leakage")
    assert rc == 0, out
    assert "patients in more than one split: 1" in out  # still reported
    assert out.rstrip().endswith("usable: yes")
    assert tree_hash(phantom_copy) == before


def test_data_check_flat_root_manifest_outside(capsys, phantom_root, tmp_path, tree_hash):
    flat = tmp_path / "flat"
    for p in phantom_root.glob("*/*/*.png"):
        (flat / p.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, flat / p.parent.name / p.name)
    before = tree_hash(flat)
    cache = tmp_path / "cache"
    rc, out, err = _koa(capsys, "data", "check", flat, "--cache-dir", cache, "--seed", 2)
    assert rc == 0, out + err
    manifest = cache / "manifests" / "flat-split-seed2.csv"
    assert manifest.is_file()
    assert f"split manifest: {manifest}" in out
    assert "(flat layout, 60 images)" in out
    assert tree_hash(flat) == before


def test_data_check_flat_root_default_cache(capsys, phantom_root, tmp_path, isolated_cache):
    flat = tmp_path / "flat"
    for p in phantom_root.glob("*/*/*.png"):
        (flat / p.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, flat / p.parent.name / p.name)
    assert _koa(capsys, "data", "check", flat)[0] == 0
    assert (isolated_cache / "manifests" / "flat-split-seed0.csv").is_file()


# ------------------------------------------------------------------ as a real process
def test_subprocess_help(tmp_path):
    r = _koa_subprocess(tmp_path, "--help")
    assert r.returncode == 0
    assert r.stdout.startswith("usage: koa") and r.stderr == ""


def test_subprocess_check_ok_and_leak(tmp_path, phantom_copy, tree_hash):
    r = _koa_subprocess(tmp_path, "data", "check", phantom_copy, "--workers", 2)
    assert r.returncode == 0, r.stderr
    assert "usable: yes" in r.stdout and "Traceback" not in r.stderr
    _leak_one(phantom_copy)
    before = tree_hash(phantom_copy)
    r = _koa_subprocess(tmp_path, "data", "check", phantom_copy)
    assert r.returncode == 1 and "usable: NO" in r.stdout and "Traceback" not in r.stderr
    r = _koa_subprocess(tmp_path, "data", "check", phantom_copy, "--allow-leakage")
    # the copied file is also an identical file across splits: still not usable
    assert r.returncode == 1 and "identical file(s)" in r.stdout
    assert tree_hash(phantom_copy) == before


def test_subprocess_unreadable(tmp_path, phantom_copy):
    bad = _truncate_one(phantom_copy)
    r = _koa_subprocess(tmp_path, "data", "check", phantom_copy)
    assert r.returncode == 1
    assert str(bad) in r.stdout
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("case", ["nonempty_synth", "missing_root", "bad_option", "no_command"])
def test_subprocess_errors_one_line_exit_2(tmp_path, phantom_root, case):
    if case == "nonempty_synth":
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "keep.txt").write_text("x")
        argv = ["synth", tmp_path / "out", "--per-class", 1, "--size", 32]
    elif case == "missing_root":
        argv = ["data", "check", tmp_path / "missing"]
    elif case == "bad_option":
        argv = ["data", "check", phantom_root, "--frobnicate"]
    else:
        argv = []
    r = _koa_subprocess(tmp_path, *argv)
    assert r.returncode == 2, r.stderr
    _one_line_error(r.stderr)
    assert r.stdout == ""
    if case == "nonempty_synth":
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["keep.txt"]
