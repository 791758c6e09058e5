"""Bad inputs and faults across `koa data check`, `train`, `evaluate` and `predict`.

Every case must end in one clear line or documented handling, never a traceback, and the
data root must be byte-for-byte unchanged afterwards (hashed before and after).
"""

import csv
import os
import shutil
import signal
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from koa_core.cli import main

TINY = ["--set", "data.image_size=64", "--set", "model.pretrained=none",
        "--set", "train.epochs=1", "--set", "train.batch_size=8",
        "--set", "train.max_steps_per_epoch=1", "--set", "train.warmup_epochs=1",
        "--set", "train.amp=off", "--quiet"]


def _png(path: Path, img: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), img)
    return path


def _knee(phantom_copy) -> np.ndarray:
    src = next((phantom_copy / "train" / "2").glob("*.png"))
    return cv2.imread(str(src), cv2.IMREAD_GRAYSCALE)


# Images that are odd but valid: each must be converted by the documented rule.
def _odd_images(folder: Path, knee: np.ndarray) -> list[Path]:
    big = cv2.resize(knee, (4000, 4000), interpolation=cv2.INTER_NEAREST)
    return [
        _png(folder / "1900001L.png", (knee.astype(np.uint16) * 257)),  # 16-bit
        _png(folder / "1900001R.png", cv2.cvtColor(knee, cv2.COLOR_GRAY2BGR)),  # RGB
        _png(folder / "1900002L.png", cv2.cvtColor(knee, cv2.COLOR_GRAY2BGRA)),  # RGBA
        _png(folder / "1900002R.png", np.full((1, 1), 128, np.uint8)),  # 1x1
        _png(folder / "1900003L.png", big),  # 4000x4000
        _png(folder / "1900003R.png", np.ascontiguousarray(knee[:, : knee.shape[1] // 2])),
    ]


def _broken_images(folder: Path, knee: np.ndarray) -> dict[str, Path]:
    good = folder / "tmp.png"
    _png(good, knee)
    data = good.read_bytes()
    good.unlink()
    out = {"truncated": folder / "1900010L.png", "zero-byte": folder / "1900010R.png",
           "text": folder / "1900011L.png", "loop": folder / "1900011R.png"}
    out["truncated"].write_bytes(data[: len(data) // 2])
    out["zero-byte"].write_bytes(b"")
    out["text"].write_text("this is not an image\n")
    os.symlink(folder / "1900012L.png", out["loop"])
    os.symlink(out["loop"], folder / "1900012L.png")
    return out


def _err_lines(capsys):
    return capsys.readouterr().err.strip().splitlines()


# ------------------------------------------------------------------ odd but valid images
def test_odd_images_are_converted_everywhere(phantom_copy, tree_hash, tiny_run, tmp_path,
                                             capsys):
    odd = _odd_images(phantom_copy / "train" / "2", _knee(phantom_copy))
    (phantom_copy / "train" / "7").mkdir()  # unknown grade folder
    shutil.copy2(odd[0], phantom_copy / "train" / "7" / "1900099L.png")
    for f in (phantom_copy / "val" / "3").iterdir():  # an empty grade folder
        f.unlink()
    before = tree_hash(phantom_copy)

    assert main(["data", "check", str(phantom_copy)]) == 0
    out = capsys.readouterr().out
    assert "16-bit gray" in out and "8-bit RGBA" in out and "4000x4000" in out and "1x1" in out
    assert "train/7/: not a grade folder" in out

    run = tmp_path / "run"
    assert main(["train", "--data", str(phantom_copy), "--out", str(run)] + TINY) == 0
    assert main(["evaluate", "--checkpoint", str(tiny_run[0] / "best.safetensors"),
                 "--data", str(phantom_copy), "--split", "train", "--n-boot", "10",
                 "--quiet"]) == 0
    capsys.readouterr()  # count predict's own lines only
    assert main(["predict", *map(str, odd), "--checkpoint",
                 str(tiny_run[0] / "best.safetensors")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(odd)
    for path, line in zip(odd, lines):
        assert line.startswith(f"{path}: KL") and "p[KL0..KL4]" in line
    assert tree_hash(phantom_copy) == before


# ------------------------------------------------------------------ broken images
def test_broken_images(phantom_copy, tree_hash, tiny_run, tmp_path, capsys):
    broken = _broken_images(phantom_copy / "val" / "1", _knee(phantom_copy))
    before = tree_hash(phantom_copy)

    assert main(["data", "check", str(phantom_copy)]) == 1
    out = capsys.readouterr().out
    # the loop is two links, each reported: 5 unreadable entries
    assert "unreadable images: 5" in out and "usable: NO" in out
    for p in broken.values():
        assert str(p) in out

    assert main(["train", "--data", str(phantom_copy), "--out", str(tmp_path / "r")]
                + TINY) == 2
    lines = _err_lines(capsys)
    # the looping link is met first, when the cache key stats every source file
    assert len(lines) == 1 and "cannot read (symbolic link loop)" in lines[0]
    os.unlink(broken["loop"])
    os.unlink(broken["loop"].with_name("1900012L.png"))
    assert main(["train", "--data", str(phantom_copy), "--out", str(tmp_path / "r")]
                + TINY) == 2
    lines = _err_lines(capsys)
    assert len(lines) == 1 and "3 image(s) could not be read" in lines[0]
    before = tree_hash(phantom_copy)
    assert main(["evaluate", "--checkpoint", str(tiny_run[0] / "best.safetensors"),
                 "--data", str(phantom_copy), "--split", "val", "--quiet"]) == 2
    assert len(_err_lines(capsys)) == 1

    good = next((phantom_copy / "val" / "0").glob("*.png"))
    assert main(["predict", str(good), *map(str, broken.values()), "--checkpoint",
                 str(tiny_run[0] / "best.safetensors")]) == 1
    captured = capsys.readouterr()
    assert captured.out.count("KL") >= 1 and str(good) in captured.out
    errors = captured.err.strip().splitlines()
    assert len(errors) == 4 and all(": error: " in e for e in errors)  # loop gone: "no such file"
    assert tree_hash(phantom_copy) == before


def test_patient_in_two_splits(phantom_copy, tree_hash, tiny_run, tmp_path, capsys):
    src = next((phantom_copy / "train" / "0").glob("*.png"))
    shutil.copy2(src, phantom_copy / "test" / "0" / src.name)
    before = tree_hash(phantom_copy)
    assert main(["data", "check", str(phantom_copy)]) == 1
    assert "patients in more than one split: 1" in capsys.readouterr().out
    assert main(["train", "--data", str(phantom_copy), "--out", str(tmp_path / "r")]
                + TINY) == 2
    assert "--allow-leakage" in _err_lines(capsys)[0]
    assert main(["evaluate", "--checkpoint", str(tiny_run[0] / "best.safetensors"),
                 "--data", str(phantom_copy), "--quiet"]) == 2
    assert "more than one split" in _err_lines(capsys)[0]
    assert tree_hash(phantom_copy) == before


# ------------------------------------------------------------------ signals
def _rows(out: Path) -> int:
    try:
        return len(list(csv.DictReader(open(out / "history.csv"))))
    except FileNotFoundError:
        return 0


class _Escaped(Exception):
    """The test's own SIGTERM handler ran: training had none installed."""


def _guard(signum, frame):
    raise _Escaped


def test_sigterm_mid_epoch_keeps_the_last_epoch_resumable(tmp_path, monkeypatch, capsys):
    """SIGTERM in epoch 2 (sent by the process to itself, as a job scheduler would) stops
    `koa train` at once with one line and status 2; epoch 1's row, best checkpoint and
    training state are intact, nothing is half-written, and the old handler is restored."""
    from koa_core.model.checkpoint import load_state
    from koa_core.train import engine
    from koa_core.train.engine import load_run_config

    out = tmp_path / "run"
    real = engine._train_epoch
    seen = {}

    def epoch(*args, **kw):
        if args[1] == 2:  # the epoch number (_train_epoch(trainer, epoch))
            seen["best"] = (out / "best.safetensors").read_bytes()
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.5)  # the handler runs at the next bytecode boundary
        return real(*args, **kw)

    monkeypatch.setattr(engine, "_train_epoch", epoch)
    old = signal.signal(signal.SIGTERM, _guard)
    try:
        rc = main(["train", "--config", "demo", "--quiet", "--out", str(out),
                   "--set", f"data.cache_dir={tmp_path / 'cache'}",
                   "--set", "data.phantom_per_class=6", "--set", "train.epochs=2",
                   "--set", "train.batch_size=8", "--set", "train.max_steps_per_epoch=2"])
        assert signal.getsignal(signal.SIGTERM) is _guard
    finally:
        signal.signal(signal.SIGTERM, old)
    err = capsys.readouterr().err
    assert rc == 2
    assert err.strip().splitlines()[-1].startswith("koa: error: interrupted; the last "
                                                    "completed epoch is saved")
    assert "Traceback" not in err
    assert _rows(out) == 1
    assert (out / "best.safetensors").read_bytes() == seen["best"]
    assert not list(out.glob(".*.tmp"))  # no half-written files
    # what --resume continues from (resuming itself: tests/train/test_engine.py)
    assert load_state(out / "last_state.safetensors")["epoch"] == 1
    assert load_run_config(out).train.epochs == 2


def test_sigint_stops_training_even_when_inherited_as_ignored(tmp_path, monkeypatch):
    """A process started in the background inherits SIGINT as ignored; training sets its
    own handler, so SIGINT in epoch 2 still stops at once with epoch 1 saved."""
    from koa_core.config import load_config
    from koa_core.model.checkpoint import load_state
    from koa_core.train import engine

    real = engine._train_epoch

    def epoch(*args, **kw):
        if args[1] == 2:  # the epoch number (_train_epoch(trainer, epoch))
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)  # the handler runs at the next bytecode boundary
        return real(*args, **kw)

    monkeypatch.setattr(engine, "_train_epoch", epoch)
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        cfg = load_config("demo", [f"data.cache_dir={tmp_path / 'cache'}",
                                   "data.phantom_per_class=6", "train.epochs=3",
                                   "train.batch_size=8", "train.max_steps_per_epoch=2"])
        with pytest.raises(KeyboardInterrupt):
            engine.fit(cfg, tmp_path / "run", progress=False)
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN  # restored afterwards
    finally:
        signal.signal(signal.SIGINT, old)
    assert load_state(tmp_path / "run" / "last_state.safetensors")["epoch"] == 1
    assert _rows(tmp_path / "run") == 1


def test_sigterm_as_interrupt_restores_and_stays_out_of_other_threads():
    """The one stop-signal helper (CLI and training): in the main thread SIGTERM, and with
    ``sigint`` SIGINT, raise KeyboardInterrupt and the old handlers come back after; in
    another thread, or when not active, it installs nothing."""
    import threading

    from koa_core.runtime import sigterm_as_interrupt

    old = signal.signal(signal.SIGTERM, _guard)
    old_int = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(KeyboardInterrupt):
            with sigterm_as_interrupt(sigint=True):
                assert signal.getsignal(signal.SIGINT) is not old_int
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.5)  # the handler runs at the next bytecode boundary
        assert signal.getsignal(signal.SIGTERM) is _guard
        assert signal.getsignal(signal.SIGINT) is old_int
        seen = []

        def worker():
            with sigterm_as_interrupt(sigint=True):
                seen.append(signal.getsignal(signal.SIGTERM))

        thread = threading.Thread(target=worker)
        thread.start()
        thread.join()
        assert seen == [_guard]
        with sigterm_as_interrupt(active=False):
            assert signal.getsignal(signal.SIGTERM) is _guard
    finally:
        signal.signal(signal.SIGTERM, old)


def test_an_interrupt_while_the_state_is_written_leaves_no_unresumable_row(tmp_path,
                                                                            monkeypatch):
    """history.csv gains an epoch's row only once that epoch's state is saved: a signal
    during the write (here, the first one) leaves no row that --resume could not continue."""
    from koa_core.config import load_config
    from koa_core.train import engine

    def interrupted(*args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "save_state", interrupted)
    cfg = load_config("demo", [f"data.cache_dir={tmp_path / 'cache'}",
                               "data.phantom_per_class=6", "train.epochs=1",
                               "train.batch_size=8", "train.max_steps_per_epoch=1"])
    with pytest.raises(KeyboardInterrupt):
        engine.fit(cfg, tmp_path / "run", progress=False)
    assert _rows(tmp_path / "run") == 0
    assert not (tmp_path / "run" / "last_state.safetensors").exists()
