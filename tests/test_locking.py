"""One writer per output folder (koa_core.locking), with real processes."""

import os
import signal
import subprocess
import sys

import pytest

from koa_core.errors import KoaError
from koa_core.locking import LOCK_NAME, FolderLock

HOLD = ("import sys, time; from koa_core.locking import FolderLock\n"
        "with FolderLock(sys.argv[1], 'holding'):\n"
        "    print('held', flush=True); time.sleep(float(sys.argv[2]))\n")


def _holder(folder, seconds):
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), str(seconds)],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_second_process_is_refused_with_the_holder_named(tmp_path):
    p = _holder(tmp_path / "out", 30)
    try:
        with pytest.raises(KoaError) as exc:
            with FolderLock(tmp_path / "out", "training a run"):
                pass
        msg = str(exc.value)
        assert "\n" not in msg and str(tmp_path / "out") in msg
        assert f"pid {p.pid}" in msg and "another koa process is training a run" in msg
    finally:
        p.kill()
        p.wait()


def test_a_lock_left_by_a_killed_process_does_not_block(tmp_path):
    p = _holder(tmp_path / "out", 60)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert (tmp_path / "out" / LOCK_NAME).exists()  # the file stays, the lock does not
    with FolderLock(tmp_path / "out"):
        pass


def test_reentrant_in_one_process_and_released_after(tmp_path):
    with FolderLock(tmp_path / "a"):
        with FolderLock(tmp_path / "a"):
            pass
        # still held by us after the inner exit: another process is refused
        r = subprocess.run([sys.executable, "-c", HOLD, str(tmp_path / "a"), "0"],
                           capture_output=True, text=True)
        assert r.returncode != 0 and "another koa process" in r.stderr
    r = subprocess.run([sys.executable, "-c", HOLD, str(tmp_path / "a"), "0"],
                       capture_output=True, text=True)
    assert r.returncode == 0


def test_a_koa_train_started_while_one_trains_is_refused_and_the_first_finishes(
        tmp_path, monkeypatch):
    """A second `koa train` into the folder, started during the first one's epoch, gets
    one error line; the first one finishes its run. (Two started together race for the
    same flock, which the kernel gives to one: the next test shows the loser is refused
    before it imports torch.)"""
    from koa_core.cli import main
    from koa_core.train import engine

    out = tmp_path / "run"
    args = ["train", "--config", "demo", "--quiet", "--out", str(out)]
    for s in [f"data.cache_dir={tmp_path / 'cache'}", "data.image_size=64",
              "data.phantom_per_class=6", "train.epochs=1", "train.max_steps_per_epoch=1",
              "train.batch_size=8"]:
        args += ["--set", s]
    second = []
    real = engine._train_epoch

    def epoch(*a, **kw):
        if not second:
            second.append(subprocess.run([sys.executable, "-m", "koa_core.cli", *args],
                                         capture_output=True, text=True, timeout=120))
        return real(*a, **kw)

    monkeypatch.setattr(engine, "_train_epoch", epoch)
    assert main(args) == 0
    (r,) = second
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr.startswith("koa: error:") and r.stderr.count("\n") == 1
    assert "another koa process is training a run" in r.stderr
    assert (out / "best.safetensors").exists() and (out / "history.csv").exists()


def test_koa_train_into_a_held_folder_is_refused_before_torch_is_imported(tmp_path):
    p = _holder(tmp_path / "run", 60)
    code = ("import sys; from koa_core.cli import main\n"
            "rc = main(['train', '--out', sys.argv[1], '--quiet'])\n"
            "print('torch imported' if 'torch' in sys.modules else 'no torch'); sys.exit(rc)\n")
    try:
        r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")],
                           capture_output=True, text=True, timeout=120)
    finally:
        p.kill()
        p.wait()
    assert r.returncode == 2 and r.stdout.strip() == "no torch", (r.stdout, r.stderr)
    assert r.stderr.startswith("koa: error:")
    assert "another koa process is training a run" in r.stderr


def test_only_rank_0_of_a_launcher_writes_the_folder(monkeypatch):
    from koa_core.locking import writes_the_folder

    monkeypatch.delenv("RANK", raising=False)
    assert writes_the_folder()
    for rank, writes in (("0", True), ("1", False), ("3", False)):
        monkeypatch.setenv("RANK", rank)
        assert writes_the_folder() is writes, rank
