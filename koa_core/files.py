"""Writing files safely: whole or not at all, and only where they can be written (ours).

Every file the package writes for later reading (records, run histories, split manifests,
sidecars, cache metadata) is written under a hidden temporary name beside its target and
renamed over it when complete (:func:`atomic_open`), so an interrupted write never leaves
half a file. :func:`check_writable` is the one "can I write there" check: a missing or
read-only folder is one line before anything is written; :func:`make_writable_folder`
creates an output folder and proves it writable (a run folder, written for hours).

Outputs never clobber what they must not: :func:`check_output_file` refuses, without
opening it, an output that exists and is not a regular file (a FIFO would block for ever,
a device or a folder cannot hold it); :func:`refuse_same_file` refuses an output that is
the same file as one of a command's sources (same device and inode: hard links, symlinks
and bind mounts included). Files the project publishes get the mode the umask gives a new
file (:func:`publish_mode`), not the 0600 of ``tempfile.mkstemp`` or safetensors.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Iterator

from koa_core.errors import KoaError

__all__ = ["atomic_open", "atomic_write_text", "check_output_file", "check_writable",
           "file_id", "file_kind", "make_writable_folder", "publish_mode", "refuse_same_file",
           "temp_path", "umask_mode"]


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


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words: "a FIFO", "a folder", "a character device"..."""
    for test, what in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISDIR, "a folder"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return what
    return "not a regular file"


def check_output_file(path: str | Path, what: str = "the output") -> None:
    """Refuse, in one line and without opening it, an output that exists and is not a
    regular file (links followed): a FIFO, a device, a socket or a folder."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):  # not there yet: nothing to clobber
        return
    except OSError as exc:
        raise KoaError(f"{path}: cannot write {what} there ({exc.strerror})") from None
    if not stat.S_ISREG(mode):
        raise KoaError(f"{path}: cannot write {what} there: {file_kind(mode)}, not a regular "
                       "file")


def file_id(path: str | Path) -> tuple[int, int] | None:
    """``(st_dev, st_ino)`` of ``path`` (links followed), or None where it cannot be
    stat-ed (missing, a link loop)."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def refuse_same_file(outputs: Mapping[str, str | Path | None],
                     sources: Iterable[str | Path], source: str = "one of the input files"
                     ) -> None:
    """Refuse (one line, before anything is written) an output - ``{what: path}`` - that is
    the same file as one of ``sources``: the same device and inode, so a hard link, a
    symlink or another spelling of the path is caught too. An output that does not exist
    yet cannot be one."""
    existing = {}
    for what, path in outputs.items():
        fid = file_id(path) if path else None
        if fid is not None:
            existing.setdefault(fid, (what, path))
    if not existing:
        return
    for src in sources:
        hit = existing.get(file_id(src))
        if hit:
            what, path = hit
            also = "" if str(src) == str(path) else f" ({src})"
            raise KoaError(f"{path}: {what} is {source}{also}; refused (it would be "
                           "overwritten)")


def umask_mode() -> int:
    """The mode a new file gets under the process's umask (0o644 under umask 022)."""
    mask = None
    with contextlib.suppress(OSError, ValueError):  # Linux: read it without changing it
        with open("/proc/self/status") as fh:
            mask = next((int(line.split()[1], 8) for line in fh
                         if line.startswith("Umask:")), None)
    if mask is None:
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


def publish_mode(path: str | Path) -> None:
    """Give a file the project publishes the umask's mode (``tempfile.mkstemp`` and
    safetensors create 0600); call it on the temporary file before its rename."""
    os.chmod(path, umask_mode())
