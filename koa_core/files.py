"""Writing files safely: whole or not at all, and only where they can be written (ours).

Every file the package writes for later reading (records, run histories, split manifests,
sidecars, cache metadata) is written under a hidden temporary name beside its target and
renamed over it when complete (:func:`atomic_open`), so an interrupted write never leaves
half a file. :func:`check_writable` is the one "can I write there" check: a missing or
read-only folder is one line before anything is written; :func:`make_writable_folder`
creates an output folder and proves it writable (a run folder, written for hours).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import IO, Iterator

from koa_core.errors import KoaError

__all__ = ["atomic_open", "atomic_write_text", "check_writable", "make_writable_folder",
           "temp_path"]


def temp_path(path: str | Path) -> Path:
    """The hidden temporary name a write of ``path`` goes through (per process)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", newline: str | None = None
                ) -> Iterator[IO]:
    """Open ``path`` for writing through :func:`temp_path`; the file replaces ``path`` only
    when the block ends without an error (else the temporary file is removed)."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, mode, newline=newline) as fh:
            yield fh
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all."""
    with atomic_open(path) as fh:
        fh.write(text)


def check_writable(path: str | Path, what: str | None = None) -> None:
    """Refuse, in one line, a file whose folder is missing or read-only (``what``: a folder
    to be written into, named in the message, instead of a file)."""
    path = Path(path)
    folder = path if what else path.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        if what:
            raise KoaError(f"{path}: cannot write the {what} there (read-only)")
        raise KoaError(f"{path}: cannot write there (folder missing or read-only)")


def make_writable_folder(folder: str | Path) -> Path:
    """Create ``folder`` (and its parents) and prove it writable with a probe file that is
    removed at once: a read-only mount or a full disk is one line before a long job."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise KoaError(f"{folder}: output folder is not writable ({exc.strerror})") from None
    return folder
