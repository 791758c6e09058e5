#!/usr/bin/env python3
"""Pack a dataset root into tar parts of bounded size, for a remote GPU machine whose
transfers are capped (one part per transfer).

    python scripts/pack_data.py ROOT --out .pack --max-mib 50 \
        --lossy train=webp:90 --first-part-mib 28

Writes OUT/data-1.tar, OUT/data-2.tar, ... each holding SPLIT/GRADE/NAME files, and
OUT/MANIFEST.json (images per split and grade, the encoding of each split, the parts).
A split listed in --lossy is re-encoded (WebP or JPEG at the given quality; a deviation
that every result made from it must state); the others are copied byte for byte
(lossless). Unpack with `python scripts/pack_data.py --unpack OUT DEST` (or plain `tar -xf`
per part) and check with `--verify DEST OUT/MANIFEST.json`.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
from pathlib import Path

EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}


def _files(root: Path, split: str) -> list[Path]:
    return sorted(p for p in (root / split).glob("[0-4]/*") if p.suffix.lower() in EXTS)


def _encode(path: Path, spec: str | None) -> tuple[str, bytes]:
    if spec is None:
        return path.name, path.read_bytes()
    from PIL import Image

    fmt, q = spec.split(":")
    with Image.open(path) as im:
        im = im.convert("L")
        buf = io.BytesIO()
        if fmt == "webp":
            im.save(buf, "WEBP", quality=int(q), method=6)
        elif fmt == "jpeg":
            im.save(buf, "JPEG", quality=int(q))
        else:
            raise SystemExit(f"pack_data: unknown format {fmt!r} (webp or jpeg)")
    return f"{path.stem}.{'jpg' if fmt == 'jpeg' else 'webp'}", buf.getvalue()


def pack(root: Path, out: Path, splits: list[str], lossy: dict[str, str], max_mib: float,
         first_mib: float | None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("data-*.tar"):
        old.unlink()
    manifest = {"splits": {}, "encoding": {}, "parts": []}
    part, size, tar = 0, 0, None
    limit = (first_mib or max_mib) * 2**20

    def new_part():
        nonlocal part, size, tar, limit
        if tar is not None:
            tar.close()
            limit = max_mib * 2**20
        part += 1
        size = 0
        name = f"data-{part}.tar"
        manifest["parts"].append(name)
        tar = tarfile.open(out / name, "w")

    new_part()
    for split in splits:
        spec = lossy.get(split)
        manifest["encoding"][split] = (f"{spec.replace(':', ' quality ')} (lossy re-encoding)"
                                       if spec else "as stored")
        counts = {str(g): 0 for g in range(5)}
        for p in _files(root, split):
            name, data = _encode(p, spec)
            cost = len(data) + 1024
            if size and size + cost > limit:
                new_part()
            info = tarfile.TarInfo(f"{split}/{p.parent.name}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            size += cost
            counts[p.parent.name] += 1
        manifest["splits"][split] = counts
    tar.close()
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def verify(dest: Path, manifest_path: Path) -> None:
    manifest = json.loads(manifest_path.read_text())
    bad = []
    for split, counts in manifest["splits"].items():
        for g, n in counts.items():
            have = len([p for p in (dest / split / g).glob("*") if p.suffix.lower() in EXTS])
            if have != n:
                bad.append(f"{split}/{g}: {have} files, expected {n}")
    if bad:
        raise SystemExit("pack_data: incomplete data: " + "; ".join(bad))
    total = sum(sum(c.values()) for c in manifest["splits"].values())
    print(f"pack_data: {dest} holds all {total} images of the manifest")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", nargs="?")
    ap.add_argument("--out", default=".pack")
    ap.add_argument("--splits", default="train,val")
    ap.add_argument("--lossy", action="append", default=[], metavar="SPLIT=FMT:Q",
                    help="re-encode a split, e.g. train=webp:90 (repeatable)")
    ap.add_argument("--max-mib", type=float, default=50)
    ap.add_argument("--first-part-mib", type=float, default=None,
                    help="a smaller first part (its transfer carries other files too)")
    ap.add_argument("--unpack", nargs=2, metavar=("PACK", "DEST"))
    ap.add_argument("--verify", nargs=2, metavar=("DEST", "MANIFEST"))
    a = ap.parse_args(argv)
    if a.verify:
        verify(Path(a.verify[0]), Path(a.verify[1]))
        return 0
    if a.unpack:
        src, dest = Path(a.unpack[0]), Path(a.unpack[1])
        dest.mkdir(parents=True, exist_ok=True)
        for t in sorted(src.glob("data-*.tar")):
            with tarfile.open(t) as tf:
                tf.extractall(dest, filter="data")
        return 0
    if not a.root:
        ap.error("ROOT is required to pack")
    lossy = dict(item.split("=", 1) for item in a.lossy)
    m = pack(Path(a.root), Path(a.out), a.splits.split(","), lossy, a.max_mib, a.first_part_mib)
    for name in m["parts"]:
        print(f"{Path(a.out) / name}: {(Path(a.out) / name).stat().st_size / 2**20:.1f} MiB")
    print(json.dumps(m["encoding"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
