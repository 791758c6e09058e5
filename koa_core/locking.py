"""One writer per output folder (run folders, record folders, export targets) and per
output file (``koa predict --out``).

Two ``koa train --out same`` started together used to pass the "already holds a run"
check before either had written anything, and then both wrote into the folder. Every
command that writes a folder now holds an exclusive ``fcntl.flock`` on ``FOLDER/.koa.lock``
for as long as it writes; the lock file names the holder (pid, host, command, start time).
The kernel drops the lock when its process ends, however it ends, so a lock left by a
killed process never blocks the next run.

A file that is written in place, a row at a time (the CSV of ``koa predict``), is locked
itself (:class:`FileLock`): it is opened without truncating it and flock-ed before a byte
is written, so a second run refused names the first (its pid and command, from the
kernel's table of locks) and leaves the first run's rows alone. A folder of pictures
(``--cam``, ``--report``) is locked the same way, on the folder itself: nothing but the
outputs is written.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import stat
import sys
import time
from pathlib import Path

from koa_core.errors import KoaError

__all__ = ["LOCK_NAME", "FileLock", "FolderLock", "writes_the_folder"]

LOCK_NAME = ".koa.lock"


def writes_the_folder() -> bool:
    """Whether this process writes (and locks) the output folder: always, except under a
    multi-process launcher such as torchrun, where rank 0 alone does (``RANK``)."""
    return int(os.environ.get("RANK", "0")) == 0


class FolderLock:
    """``with FolderLock(folder):`` - exclusive, non-blocking; a second holder gets one
    KoaError line naming the folder and the first holder. Re-entrant within a process."""

    _held: dict[str, int] = {}  # resolved folder -> depth, for nested use in one process

    def __init__(self, folder: str | Path, what: str = "writing") -> None:
        self.folder = Path(folder)
        self.what = what
        self._fh = None
        self._key = None

    def __enter__(self) -> FolderLock:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise KoaError(f"{self.folder}: output folder is not writable "
                           f"({exc.strerror})") from None
        self._key = str(self.folder.resolve())
        if self._key in FolderLock._held:
            FolderLock._held[self._key] += 1
            return self
        path = self.folder / LOCK_NAME
        try:
            fh = open(path, "a+")
        except OSError as exc:
            raise KoaError(f"{self.folder}: output folder is not writable "
                           f"({exc.strerror})") from None
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = _describe(fh.read())
            fh.close()
            raise KoaError(f"{self.folder}: another koa process is {self.what} here "
                           f"({holder}); wait for it or choose another folder") from None
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "command": " ".join(sys.argv[:6]),
                             "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n")
        fh.flush()
        self._fh = fh
        FolderLock._held[self._key] = 1
        return self

    def __exit__(self, *exc) -> None:
        depth = FolderLock._held.get(self._key, 0) - 1
        if depth > 0:
            FolderLock._held[self._key] = depth
            return
        FolderLock._held.pop(self._key, None)
        if self._fh is not None:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


def _describe(text: str) -> str:
    try:
        h = json.loads(text)
        return f"pid {h['pid']} on {h['host']}, since {h['since']}: {h['command']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"


class FileLock:
    """``with FileLock(path) as lock:`` - the file itself, opened for writing without
    truncating it (``lock.fd``), created if missing, and locked exclusively without waiting;
    a second holder gets one KoaError line naming the file and the first holder. A file
    this lock created and nothing was written into is removed when the block fails. An
    existing folder is locked itself (opened read-only). Re-entrant within a process (the
    same file by any name)."""

    _held: dict[tuple[int, int], list] = {}  # (st_dev, st_ino) -> [fd, depth]

    def __init__(self, path: str | Path, what: str = "writing it") -> None:
        self.path = Path(path)
        self.what = what
        self.fd = -1
        self.created = False
        self._key = None

    def __enter__(self) -> FileLock:
        for _ in range(5):  # the name may be removed or replaced while it is locked
            fd, created = self._open()
            st = os.fstat(fd)
            key = (st.st_dev, st.st_ino)
            if key in FileLock._held:
                os.close(fd)
                self._key, self.fd = key, FileLock._held[key][0]
                FileLock._held[key][1] += 1
                return self
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _flock_holder(st)
                os.close(fd)
                raise KoaError(f"{self.path}: another process is {self.what} ({holder}); "
                               "wait for it or choose another name") from None
            if _same(self.path, st):
                os.set_blocking(fd, True)
                self.fd, self.created, self._key = fd, created, key
                FileLock._held[key] = [fd, 1]
                return self
            os.close(fd)
        raise KoaError(f"{self.path}: replaced again and again while being locked; refused")

    def _open(self) -> tuple[int, bool]:
        """The file, opened write-only and non-blocking (a FIFO put in its place after the
        caller's checks cannot hang it), and whether this open created it."""
        flags = (os.O_WRONLY | os.O_CREAT | getattr(os, "O_NONBLOCK", 0)
                 | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0))
        if self.path.is_dir():
            try:
                return os.open(self.path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
                               | getattr(os, "O_CLOEXEC", 0)), False
            except OSError as exc:
                raise KoaError(f"{self.path}: cannot lock the folder ({exc.strerror})") from None
        try:
            try:
                return os.open(self.path, flags | os.O_EXCL, 0o666), True
            except FileExistsError:
                fd = os.open(self.path, flags, 0o666)
        except OSError as exc:
            raise KoaError(f"{self.path}: cannot write there ({exc.strerror or exc})") from None
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):  # a FIFO with a reader, swapped in after the checks
            os.close(fd)
            raise KoaError(f"{self.path}: cannot write there: not a regular file")
        return fd, False

    def __exit__(self, exc_type, *exc) -> None:
        entry = FileLock._held.get(self._key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] > 0:
            return
        del FileLock._held[self._key]
        if exc_type is not None and self.created and os.fstat(self.fd).st_size == 0:
            if _same(self.path, os.fstat(self.fd)):
                self.path.unlink(missing_ok=True)  # still locked: nobody else has it
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = -1


def _same(path: Path, st: os.stat_result) -> bool:
    try:
        now = os.stat(path)
    except OSError:
        return False
    return (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)


def _flock_holder(st: os.stat_result) -> str:
    """Who holds the flock on the file of ``st``: 'pid N: command', from /proc/locks
    (Linux); 'holder unknown' elsewhere or where the holder cannot be seen."""
    try:
        with open("/proc/locks") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return "holder unknown"
    want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in lines:
        parts = line.split()  # 1: FLOCK  ADVISORY  WRITE 1234 fd:00:5678 0 EOF
        if len(parts) < 6 or parts[1] != "FLOCK":
            continue  # a waiter ("->") or a POSIX lock
        if parts[5] == want and parts[4].isdigit():
            return f"pid {parts[4]}: {_command(parts[4])}"
    return "holder unknown"


def _command(pid: str) -> str:
    """A process's command line, shortened: the program's name and its first arguments
    (the script of ``python -c`` left out)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = os.fsdecode(fh.read()).split("\0")[:-1]
    except OSError:
        return "command unknown"
    if len(argv) > 2 and argv[1] == "-c":
        argv = argv[:1] + argv[3:]
    if argv:
        argv[0] = os.path.basename(argv[0])
    text = " ".join(argv[:8])
    return text if len(text) <= 200 else text[:197] + "..."
