"""A cache of decoded, preprocessed views (paper §2.2 pipeline, run once per dataset).

Decoding WebP/PNG and running CLAHE on every sample of every epoch wastes most of a CPU.
The cache stores, for a list of records and a :class:`~koa_core.data.preprocess.Preprocessor`,
one ``uint8`` array of shape ``(N, 2, size, size)`` (raw view, CLAHE view) as a ``.npy``
file that later epochs and runs memory-map.

* The key hashes the preprocessing parameters (with the module's version) and, for each
  source file, its resolved path, size and modification time: a changed file, a new file
  or new parameters give a new key, so a stale cache is never used.
* Beside the array a JSON sidecar records its shape and a BLAKE2 digest of its bytes.
  A truncated or corrupted array fails the check and is rebuilt, never silently used.
* Files are written to a temporary name and renamed, so an interrupted build leaves
  nothing half-written. The cache lives outside the data root (refused inside it).
* Memory stays flat however large the split: a build preprocesses and writes
  :data:`CHUNK` images at a time, the digest is computed chunk by chunk from the file, and
  ``get(..., mapped=False)`` returns a :class:`ViewFile` that reads only the slices asked
  for (what evaluation uses); training memory-maps the array instead.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from koa_core.data.index import Record
from koa_core.data.preprocess import Preprocessor
from koa_core.errors import KoaError

__all__ = ["CHUNK", "ViewCache", "ViewFile", "default_cache_dir", "views_digest"]

CHUNK = 512  # images preprocessed, written and hashed at a time (~50 MB at 224 px)


def default_cache_dir() -> Path:
    """``$KOA_CACHE_DIR``, else ``$XDG_CACHE_HOME/koa_core``, else ``~/.cache/koa_core``."""
    if os.environ.get("KOA_CACHE_DIR"):
        return Path(os.environ["KOA_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "koa_core"


def views_digest(arr: np.ndarray) -> str:
    """BLAKE2b-128 of an array's bytes (read in 64 MiB chunks): what the cache verifies on
    load, and what a result record stores to name the validation pixels it saw."""
    h = hashlib.blake2b(digest_size=16)
    flat = arr.reshape(-1)
    step = 64 << 20
    for i in range(0, flat.size, step):
        h.update(flat[i:i + step].tobytes())
    return h.hexdigest()


class ViewFile:
    """A cached ``.npy`` array of views read slice by slice (``len``, ``shape``,
    ``views[i:j]``), never mapped whole: resident memory stays at one slice."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        with open(self.path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                    else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read(fh)
            self.offset = fh.tell()
        if fortran or dtype != np.uint8:
            raise ValueError(f"{path}: not a C-ordered uint8 array")
        self.shape = tuple(shape)
        self.dtype = np.dtype(np.uint8)
        self._item = int(np.prod(self.shape[1:], dtype=np.int64))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            return self[index:index + 1][0] if index >= 0 else self[len(self) + index]
        if not isinstance(index, slice) or index.step not in (None, 1):
            raise TypeError("ViewFile supports integers and contiguous slices")
        start, stop, _ = index.indices(len(self))
        count = max(0, stop - start)
        out = np.empty((count, *self.shape[1:]), np.uint8)
        with open(self.path, "rb") as fh:
            fh.seek(self.offset + start * self._item)
            fh.readinto(memoryview(out).cast("B"))
        return out

    def __array__(self, dtype=None, copy=None):
        arr = self[0:len(self)]
        return arr if dtype is None else arr.astype(dtype)


def _file_digest(path: Path, offset: int) -> str:
    """:func:`views_digest` of the array stored after ``offset`` in a file, read in chunks."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        fh.seek(offset)
        while block := fh.read(64 << 20):
            h.update(block)
    return h.hexdigest()


class ViewCache:
    """Build-once, verify-always cache of (raw, CLAHE) uint8 views."""

    def __init__(self, cache_dir: str | Path | None = None, workers: int | None = None):
        self.dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.workers = workers or min(8, os.cpu_count() or 1)
        self.last_status = ""  # "hit", "built" or "rebuilt (...)": for logs and tests

    def key(self, records: Sequence[Record], pre: Preprocessor) -> str:
        """Hash of the preprocessing parameters and every source file's identity."""
        h = hashlib.sha256(json.dumps(pre.params(), sort_keys=True).encode())
        for r in records:
            try:
                p = Path(r.path).resolve()
                st = p.stat()
            except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (3.11-3.12)
                why = getattr(exc, "strerror", None) or "symbolic link loop"
                raise KoaError(f"{r.path}: cannot read ({why})") from None
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()[:24]

    def paths(self, key: str) -> tuple[Path, Path]:
        return self.dir / f"views-{key}.npy", self.dir / f"views-{key}.json"

    def _check_location(self, root: str | None) -> None:
        if root is None:
            return
        root_p = Path(root).resolve()
        if self.dir.resolve().is_relative_to(root_p):
            raise KoaError(f"cache folder {self.dir} is inside the data root {root_p}; "
                           "choose another (--cache-dir or KOA_CACHE_DIR)")

    def load(self, key: str, mapped: bool = True) -> np.ndarray | ViewFile | None:
        """The cached array for a key (memory-mapped, or a :class:`ViewFile`), or None when
        absent, stale or corrupt."""
        arr_p, meta_p = self.paths(key)
        if not (arr_p.exists() and meta_p.exists()):
            self.last_status = "miss"
            return None
        try:
            meta = json.loads(meta_p.read_text())
            view = ViewFile(arr_p)
            expected = view.offset + int(np.prod(view.shape, dtype=np.int64))
            ok = (list(view.shape) == meta["shape"] and arr_p.stat().st_size == expected
                  and _file_digest(arr_p, view.offset) == meta["digest"])
            arr = (np.load(arr_p, mmap_mode="r", allow_pickle=False) if ok and mapped
                   else view)
        except Exception:  # any failure to read it back means: rebuild, never trust it
            ok = False
        if not ok:
            self.last_status = "corrupt"
            return None
        self.last_status = "hit"
        return arr

    def build(self, records: Sequence[Record], pre: Preprocessor, key: str,
              progress: bool = False, mapped: bool = True) -> np.ndarray | ViewFile:
        """Decode and preprocess every record in parallel threads, :data:`CHUNK` at a time,
        writing and hashing each chunk as it is done; then store atomically."""
        n, s = len(records), pre.size
        shape = (n, 2, s, s)
        errors: list[str] = []
        self.dir.mkdir(parents=True, exist_ok=True)
        arr_p, meta_p = self.paths(key)
        tmp = arr_p.with_name(f".{arr_p.name}.{os.getpid()}.tmp")
        digest = hashlib.blake2b(digest_size=16)
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=n, desc="preprocess", unit="img", leave=False)
        try:
            with open(tmp, "wb") as fh, ThreadPoolExecutor(self.workers) as pool:
                np.lib.format.write_array_header_1_0(
                    fh, {"descr": "|u1", "fortran_order": False, "shape": shape})
                for start in range(0, n, CHUNK):
                    out = np.empty((min(CHUNK, n - start), 2, s, s), dtype=np.uint8)

                    def work(i: int, out=out, start=start) -> None:
                        try:
                            out[i, 0], out[i, 1] = pre.load(records[start + i].path)
                        except KoaError as exc:
                            errors.append(str(exc))

                    for _ in pool.map(work, range(len(out))):
                        if bar is not None:
                            bar.update(1)
                    if not errors:
                        fh.write(out.data)
                        digest.update(out.data)
            if errors:
                raise KoaError(f"{len(errors)} image(s) could not be read, e.g. {errors[0]}; "
                               "run `koa data check` for the full list")
            meta = {"shape": list(shape), "digest": digest.hexdigest(),
                    "params": pre.params(), "n": n}
            tmp_meta = meta_p.with_name(f".{meta_p.name}.{os.getpid()}.tmp")
            tmp_meta.write_text(json.dumps(meta))
            os.replace(tmp, arr_p)
            os.replace(tmp_meta, meta_p)
        finally:
            if bar is not None:
                bar.close()
            tmp.unlink(missing_ok=True)
        return np.load(arr_p, mmap_mode="r") if mapped else ViewFile(arr_p)

    def get(self, records: Sequence[Record], pre: Preprocessor, root: str | None = None,
            progress: bool = False, mapped: bool = True) -> np.ndarray | ViewFile:
        """Views for the records, from the cache when valid, else built and stored.
        ``mapped=False``: a :class:`ViewFile` read slice by slice (flat memory)."""
        if not records:
            return np.empty((0, 2, pre.size, pre.size), dtype=np.uint8)
        self._check_location(root)
        key = self.key(records, pre)
        arr = self.load(key, mapped=mapped)
        if arr is not None:
            return arr
        before = self.last_status
        arr = self.build(records, pre, key, progress=progress, mapped=mapped)
        self.last_status = "rebuilt (corrupt)" if before == "corrupt" else "built"
        return arr
