"""`koa train`, `koa evaluate`, `koa predict` end to end on the phantom, and their errors."""

import json
import subprocess
import sys

import pytest

from koa_core.cli import main

SMALL = ["data.image_size=64", "data.phantom_per_class=12", "model.pretrained=none",
         "train.epochs=1", "train.batch_size=8", "train.max_steps_per_epoch=2",
         "train.warmup_epochs=1", "train.amp=off"]


def _sets(cache):
    out = []
    for s in SMALL + [f"data.cache_dir={cache}"]:
        out += ["--set", s]
    return out


@pytest.mark.parametrize("profile", ["demo", "ablation-raw"])
def test_train_evaluate_predict(tmp_path, capsys, profile):
    run = tmp_path / "run"
    assert main(["train", "--config", profile, "--quiet", "--out", str(run)]
                + _sets(tmp_path / "cache")) == 0
    assert "best.safetensors" in capsys.readouterr().out
    side = json.loads((run / "best.json").read_text())
    expected_streams = "raw" if profile == "ablation-raw" else "dual"
    assert side["config"]["model"]["streams"] == expected_streams
    root = tmp_path / "data"
    assert main(["synth", str(root), "--per-class", "10", "--seed", "3", "--size", "64"]) == 0
    capsys.readouterr()
    metrics = tmp_path / "m.json"
    assert main(["evaluate", "--checkpoint", str(run / "best.safetensors"), "--data", str(root),
                 "--split", "test", "--out", str(metrics), "--n-boot", "50", "--quiet",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    report = capsys.readouterr().out
    assert "macro avg" in report and "QWK" in report
    assert json.loads(metrics.read_text())["n"] > 0
    img = sorted((root / "test" / "4").glob("*.png"))[0]
    assert main(["predict", str(img), "--checkpoint", str(run / "best.safetensors"),
                 "--json"]) == 0
    preds = json.loads(capsys.readouterr().out)
    assert preds[0]["path"] == str(img) and len(preds[0]["probabilities"]) == 5


def _run(*args):
    return subprocess.run([sys.executable, "-m", "koa_core.cli", *args], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("args,needle", [
    (["train", "--out", "X", "--set", "train.epochs"], "section.key=value"),
    (["train", "--out", "X", "--set", "nope.x=1"], "unknown config section"),
    (["train", "--out", "X", "--set", "train.epochs=many"], "not a valid int"),
    (["train", "--out", "X", "--config", "no-such-profile"], "config file not found"),
    (["evaluate", "--checkpoint", "missing.safetensors", "--data", "."], "not found"),
    (["predict", "x.png", "--checkpoint", "model.pt"], "pickled"),
])
def test_user_errors_are_one_line(tmp_path, monkeypatch, capsys, args, needle):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.pt").write_bytes(b"\x80\x04whatever")
    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("koa: error: ")
    assert needle in lines[0]
    assert not (tmp_path / "X").exists()  # failed before creating the run folder


def test_user_error_in_a_real_process_has_no_traceback(tmp_path):
    res = _run("train", "--out", str(tmp_path / "X"), "--set", "train.lr=fast")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "koa: error: --set train.lr=fast: train.lr: 'fast' is not a valid float"]


def test_predict_bad_image_exit_1(tiny_run, tmp_path, capfd):
    """In process, with the file descriptors captured (a library writing to fd 2 directly
    would show); a real predict process is tested in tests/infer/test_predict.py."""
    run, root = tiny_run
    good = sorted((root / "val").rglob("*.png"))[0]
    bad = tmp_path / "empty.png"
    bad.write_bytes(b"")
    rc = main(["predict", str(good), str(bad), "--checkpoint", str(run / "best.safetensors")])
    out, err = capfd.readouterr()
    assert rc == 1
    assert str(good) in out and "KL" in out
    assert err.strip() == f"{bad}: error: empty file"
