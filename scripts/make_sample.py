#!/usr/bin/env python3
"""Copy a small, seeded sample of validation crops (default 10 per grade) from a dataset
root, byte for byte, for the book's live figures (Fig. 1 grid, the CLAHE study, Grad-CAM):

    python scripts/make_sample.py ROOT --out book/sample --per-grade 10 --seed 0

Writes OUT/val/{0..4}/NAME and OUT/SAMPLE.json (the files, their SHA-256, the command).
The knees are drawn uniformly per grade from the validation split only, never the test split.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import sys
from pathlib import Path

EXTS = {".png", ".jpg", ".jpeg", ".webp"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root")
    ap.add_argument("--out", default="book/sample")
    ap.add_argument("--per-grade", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    root, out = Path(a.root), Path(a.out)
    rng = random.Random(a.seed)
    files = []
    for g in range(5):
        pool = sorted(p for p in (root / "val" / str(g)).iterdir() if p.suffix.lower() in EXTS)
        picks = sorted(rng.sample(pool, min(a.per_grade, len(pool))))
        dest = out / "val" / str(g)
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        for p in picks:
            shutil.copyfile(p, dest / p.name)
            files.append({"path": f"val/{g}/{p.name}", "grade": g,
                          "sha256": hashlib.sha256(p.read_bytes()).hexdigest()})
    (out / "SAMPLE.json").write_text(json.dumps({
        "command": f"python scripts/make_sample.py ROOT --out {a.out} --per-grade "
                   f"{a.per_grade} --seed {a.seed}",
        "split": "val", "files": files}, indent=1) + "\n")
    size = sum((out / f["path"]).stat().st_size for f in files)
    print(f"{len(files)} images, {size / 2**20:.2f} MiB in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
