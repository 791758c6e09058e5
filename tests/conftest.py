"""Shared fixtures: a small synthetic phantom written once per session, a tree hash to
prove nothing is written under a data root, and an isolated view cache."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _tree_hash(root: str | Path) -> str:
    """Hash of every entry under ``root``: relative path, kind, bytes and mtime.

    Folders are included (with their mtime) so that creating and then deleting a file
    under the root still changes the hash.
    """
    root = Path(root)
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        d = Path(dirpath)
        st = os.lstat(d)
        h.update(f"D\0{d.relative_to(root)}\0{st.st_mtime_ns}\n".encode())
        for name in sorted(filenames):
            p = d / name
            st = os.lstat(p)
            h.update(f"F\0{p.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            if p.is_file() and not p.is_symlink():
                h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="session")
def tree_hash():
    """``tree_hash(root) -> str``: changes if anything under root is added, removed,
    rewritten or touched."""
    return _tree_hash


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory) -> Path:
    """The public layout, 12 images per grade at 64x64 (60 images), written once.

    Read-only by convention: tests that modify a dataset copy it first
    (see ``phantom_copy``).
    """
    from koa_core.data.phantom import write_phantom

    root = tmp_path_factory.mktemp("phantom") / "kl"
    write_phantom(root, per_class=12, seed=0, size=64)
    return root


@pytest.fixture(scope="session")
def phantom_root_224(tmp_path_factory) -> Path:
    """A tiny 224x224 phantom (4 per grade, 20 images) for full-size pipeline tests."""
    from koa_core.data.phantom import write_phantom

    root = tmp_path_factory.mktemp("phantom224") / "kl"
    write_phantom(root, per_class=4, seed=1, size=224)
    return root


@pytest.fixture
def phantom_copy(phantom_root, tmp_path) -> Path:
    """A private, modifiable copy of the session phantom."""
    import shutil

    dst = tmp_path / "kl_copy"
    shutil.copytree(phantom_root, dst)
    return dst


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch) -> Path:
    """Point KOA_CACHE_DIR at a fresh temporary folder for the test."""
    d = tmp_path / "koa_cache"
    monkeypatch.setenv("KOA_CACHE_DIR", str(d))
    return d


@pytest.fixture(scope="session", autouse=True)
def _pinned_engine():
    """The CLI's --engine auto picks ONNX Runtime on CPUs without bf16 and torch elsewhere;
    the suite pins torch so that it behaves alike on both kinds of CPU (and does not export
    every checkpoint it predicts with). tests/test_backends.py checks auto's choice."""
    old = os.environ.get("KOA_ENGINE")
    os.environ["KOA_ENGINE"] = "torch"
    yield
    if old is None:
        os.environ.pop("KOA_ENGINE", None)
    else:
        os.environ["KOA_ENGINE"] = old


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory):
    """Keep every cache the suite builds out of the user's ~/.cache."""
    import os

    old = os.environ.get("KOA_CACHE_DIR")
    os.environ["KOA_CACHE_DIR"] = str(tmp_path_factory.mktemp("session_cache"))
    yield
    if old is None:
        os.environ.pop("KOA_CACHE_DIR", None)
    else:
        os.environ["KOA_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, phantom_root) -> tuple[Path, Path]:
    """A proposed-model run trained for 2 epochs of 2 steps on the session phantom (64 px).

    Returns ``(run_dir, data_root)``; run_dir holds best.safetensors and its sidecar.
    """
    from koa_core.config import load_config
    from koa_core.train.engine import fit

    run = tmp_path_factory.mktemp("tiny_run") / "run"
    cfg = load_config("demo", [f"data.root={phantom_root}", "train.epochs=2",
                               "train.batch_size=8", "train.max_steps_per_epoch=2",
                               "train.warmup_epochs=1"])
    fit(cfg, run, progress=False)
    return run, phantom_root


@pytest.fixture(scope="session")
def tiny_onnx(tiny_run, tmp_path_factory) -> Path:
    """The tiny run's checkpoint exported to ONNX (fp32) once per session (~10 s): tests
    that need a real export file share it."""
    from koa_core.infer.onnx import export_onnx

    return export_onnx(tiny_run[0] / "best.safetensors",
                       tmp_path_factory.mktemp("tiny_onnx") / "model.onnx")
