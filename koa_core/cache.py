"""A cache of decoded, preprocessed views (paper §2.2 pipeline, run once per dataset).

Decoding WebP/PNG and running CLAHE on every sample of every epoch wastes most of a CPU.
The cache stores, for a list of records and a :class:`~koa_core.preprocess.Preprocessor`,
one ``uint8`` array of shape ``(N, 2, size, size)`` (raw view, CLAHE view) as a ``.npy``
file that later epochs and runs memory-map.

* The key hashes the preprocessing parameters (with the module's version) and, for each
  source file, its resolved path, size and modification time: a changed file, a new file
  or new parameters give a new key, so a stale cache is never used.
* Beside the array a JSON sidecar records its shape and a BLAKE2 digest of its bytes.
  A truncated or corrupted array fails the check and is rebuilt, never silently used.
* Files are written to a temporary name and renamed, so an interrupted build leaves
  nothing half-written. The cache lives outside the data root (refused inside it).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .data import Record
from .errors import KoaError
from .preprocess import Preprocessor

__all__ = ["ViewCache", "default_cache_dir", "views_digest"]


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

    def load(self, key: str) -> np.ndarray | None:
        """The cached array for a key, or None when absent, stale or corrupt."""
        arr_p, meta_p = self.paths(key)
        if not (arr_p.exists() and meta_p.exists()):
            self.last_status = "miss"
            return None
        try:
            meta = json.loads(meta_p.read_text())
            arr = np.load(arr_p, mmap_mode="r", allow_pickle=False)
            ok = (isinstance(arr, np.ndarray) and list(arr.shape) == meta["shape"]
                  and views_digest(arr) == meta["digest"])
        except Exception:  # any failure to read it back means: rebuild, never trust it
            ok = False
        if not ok:
            self.last_status = "corrupt"
            return None
        self.last_status = "hit"
        return arr

    def build(self, records: Sequence[Record], pre: Preprocessor, key: str,
              progress: bool = False) -> np.ndarray:
        """Decode and preprocess every record in parallel threads, then store atomically."""
        n, s = len(records), pre.size
        out = np.empty((n, 2, s, s), dtype=np.uint8)
        errors: list[str] = []

        def work(i: int) -> None:
            try:
                out[i, 0], out[i, 1] = pre.load(records[i].path)
            except KoaError as exc:
                errors.append(str(exc))

        with ThreadPoolExecutor(self.workers) as pool:
            it = pool.map(work, range(n))
            if progress:
                from tqdm.auto import tqdm
                it = tqdm(it, total=n, desc="preprocess", unit="img", leave=False)
            for _ in it:
                pass
        if errors:
            raise KoaError(f"{len(errors)} image(s) could not be read, e.g. {errors[0]}; "
                           "run `koa data check` for the full list")
        self.dir.mkdir(parents=True, exist_ok=True)
        arr_p, meta_p = self.paths(key)
        tmp = arr_p.with_name(f".{arr_p.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            np.save(fh, out)
        meta = {"shape": list(out.shape), "digest": views_digest(out), "params": pre.params(),
                "n": n}
        tmp_meta = meta_p.with_name(f".{meta_p.name}.{os.getpid()}.tmp")
        tmp_meta.write_text(json.dumps(meta))
        os.replace(tmp, arr_p)
        os.replace(tmp_meta, meta_p)
        return np.load(arr_p, mmap_mode="r")

    def get(self, records: Sequence[Record], pre: Preprocessor, root: str | None = None,
            progress: bool = False) -> np.ndarray:
        """Views for the records, from the cache when valid, else built and stored."""
        if not records:
            return np.empty((0, 2, pre.size, pre.size), dtype=np.uint8)
        self._check_location(root)
        key = self.key(records, pre)
        arr = self.load(key)
        if arr is not None:
            return arr
        before = self.last_status
        arr = self.build(records, pre, key, progress=progress)
        self.last_status = "rebuilt (corrupt)" if before == "corrupt" else "built"
        return arr
