"""The check that names the copy of the images a result record saw (``koa stamp``).

The public dataset's crops exist in more than one copy: the originals, and copies whose
every image was enhanced upstream, which a model sees as different pixels. A record's
provenance names its copy in ``data.copy`` by one of the stable names of
:mod:`.copies`.

New records get it from the command that writes them (``koa campaign`` / ``koa record
--data-copy``; the phantom names itself). Records made before ``data.copy`` existed are
stamped by ``koa stamp RECORDS --data ROOT``, which does not take the copy's word for it:
for each record it rebuilds the validation views of ROOT's originals exactly as the
campaign did (:func:`koa_core.train.engine.prepare_data`: the record's own ``config.yaml``, the
same knees in the same order), once as stored and once through the upstream CLAHE
(clip 5.0, 8x8), hashes each with :func:`koa_core.data.cache.views_digest` and compares them
with the record's ``data.val_views_blake2b``. The one that matches names the copy, and
``data.copy_evidence`` says so; when neither matches, nothing is written. The check
names a copy relative to ROOT, which must therefore hold the originals (a root that is
itself an enhanced copy would make its own records look "original"): check ROOT against
its manifest first.
"""

from __future__ import annotations

import hashlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from koa_core.config import config_from_dict
from koa_core.data.cache import CHUNK, ViewCache
from koa_core.data.imaging import read_gray
from koa_core.data.index import discover
from koa_core.data.preprocess import Preprocessor, apply_clahe
from koa_core.errors import KoaError
from koa_core.experiments.copies import ORIGINAL, UPSTREAM_CLAHE, clahe_copy
from koa_core.experiments.records import find_records, stamp_copy
from koa_core.train.dataset import stratified_subset

__all__ = ["stamp_records", "val_views_digest"]




# ---------------------------------------------------------------- the mechanical check
def _val_records(cfg, root: str):
    """The validation knees of ``root`` in the order :func:`koa_core.train.engine.prepare_data`
    gives them for ``cfg`` (same discovery seed, leakage rule and subset)."""
    cache = ViewCache(cfg.data.cache_dir)
    index = discover(root, seed=cfg.train.seed, manifest_dir=cache.dir / "manifests")
    index.require_no_leakage(cfg.data.allow_leakage)
    recs = stratified_subset(index.split("val"), cfg.data.subset, seed=cfg.train.seed)
    if not recs:
        raise KoaError(f"{root}: the val split has no images")
    return recs


def val_views_digest(cfg, root: str, upstream: tuple[float, int] | None = None,
                     workers: int = 4) -> tuple[str, int]:
    """:func:`~koa_core.data.cache.views_digest` of the validation views ``cfg`` makes from
    ``root`` (what :func:`koa_core.experiments.campaign.record_run` stores), and how many knees;
    ``upstream`` = (clip, tiles): each decoded image first through that CLAHE, as a copy
    enhanced upstream holds it. Built chunk by chunk (flat memory), never cached."""
    recs = _val_records(cfg, root)
    return _digest(recs, Preprocessor.from_config(cfg), upstream, root, workers), len(recs)


def _digest(recs, pre, upstream, root, workers: int = 4) -> str:
    def views(rec):
        try:
            img = read_gray(rec.path)
        except KoaError as exc:
            raise KoaError(f"{exc}; run `koa data check {root}`") from None
        if upstream is not None:
            img = apply_clahe(img, upstream[0], upstream[1])
        return pre(img)

    h = hashlib.blake2b(digest_size=16)  # = views_digest of the whole (N, 2, s, s) array
    with ThreadPoolExecutor(workers) as pool:
        for start in range(0, len(recs), CHUNK):
            out = np.empty((min(CHUNK, len(recs) - start), 2, pre.size, pre.size), np.uint8)
            for i, (raw, clahe) in enumerate(pool.map(views, recs[start:start + len(out)])):
                out[i, 0], out[i, 1] = raw, clahe
            h.update(out.tobytes())
    return h.hexdigest()


def _identify(rec: Path, root: str, memo: dict) -> tuple[str, str]:
    """(copy, evidence) of one record, or a KoaError naming why it cannot be stamped."""
    import yaml

    try:
        prov = json.loads((rec / "provenance.json").read_text())
        cfg = config_from_dict(yaml.safe_load((rec / "config.yaml").read_text()),
                               origin=str(rec / "config.yaml"))
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise KoaError(f"{rec}: not a readable record ({str(exc).splitlines()[0]})") from None
    want = (prov.get("data") or {}).get("val_views_blake2b")
    if not want:
        raise KoaError(f"{rec}: its provenance has no data.val_views_blake2b to check a copy "
                       "against; nothing stamped")

    recs = _val_records(cfg, root)
    pre = Preprocessor.from_config(cfg)
    # records of one campaign share their knees and views: each variant is computed once
    key = (tuple(r.path for r in recs), repr(pre.params()))
    clip, tiles = UPSTREAM_CLAHE
    for upstream in (None, UPSTREAM_CLAHE):
        if (key, upstream) not in memo:
            memo[key, upstream] = _digest(recs, pre, upstream, root)
    d_orig, d_clahe, n = memo[key, None], memo[key, UPSTREAM_CLAHE], len(recs)
    day = time.strftime("%Y-%m-%d")
    if want == d_orig:
        return ORIGINAL, (f"koa stamp {day}: the {n} validation views of {root} as stored, "
                          "through the record's config.yaml, hash to its val_views_blake2b "
                          f"(through CLAHE clip {clip!r}, {tiles}x{tiles} first: {d_clahe})")
    if want == d_clahe:
        return clahe_copy(clip, tiles), (
            f"koa stamp {day}: the {n} validation views of {root} through CLAHE clip "
            f"{clip!r}, {tiles}x{tiles}, then the record's config.yaml, hash to its "
            f"val_views_blake2b (as stored: {d_orig})")
    raise KoaError(f"{rec}: its val_views_blake2b {want} matches neither the validation "
                   f"views of {root} as stored ({d_orig}) nor through CLAHE clip {clip!r}, "
                   f"{tiles}x{tiles} ({d_clahe}); not the data it was made from? nothing "
                   "stamped")


def stamp_records(folders, root: str | Path, echo=print) -> list[tuple[Path, str]]:
    """Verify every record under ``folders`` against ``root`` (see the module docstring)
    and, only when all of them match one copy, write ``data.copy`` and
    ``data.copy_evidence`` into each provenance. Returns (record, copy) pairs."""
    root = str(root)
    if not Path(root).is_dir():
        raise KoaError(f"{root}: no such folder")
    records = [r for f in folders for r in find_records(f)]
    if not records:
        raise KoaError(f"{', '.join(map(str, folders))}: no records (folders holding a "
                       "provenance.json)")
    memo: dict = {}
    verified = [(rec, *_identify(rec, root, memo)) for rec in records]  # all, then write
    for rec, copy, evidence in verified:
        stamp_copy(rec, copy, evidence)
        echo(f"{rec}: {copy}")
    return [(rec, copy) for rec, copy, _ in verified]
