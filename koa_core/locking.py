"""One writer per output folder (run folders, record folders, export targets).

Two ``koa train --out same`` started together used to pass the "already holds a run"
check before either had written anything, and then both wrote into the folder. Every
command that writes a folder now holds an exclusive ``fcntl.flock`` on ``FOLDER/.koa.lock``
for as long as it writes; the lock file names the holder (pid, host, command, start time).
The kernel drops the lock when its process ends, however it ends, so a lock left by a
killed process never blocks the next run.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from koa_core.errors import KoaError

__all__ = ["LOCK_NAME", "FolderLock", "writes_the_folder"]

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
