"""The data copy a record names (koa_core.experiments.datacopy): its names, and `koa stamp`, which
names the copy of an old record only when its validation pixels prove it."""

import json

import cv2
import numpy as np
import pytest
import yaml

from koa_core.cli import main
from koa_core.errors import KoaError
from koa_core.experiments.copies import parse_copy
from koa_core.experiments.records import PROVENANCE, check_record, write_record


@pytest.mark.parametrize("text,name", [
    ("original", "original"), (" Original ", "original"), ("phantom", "phantom"),
    ("clahe-5-8x8", "clahe-5.0-8x8 (enhanced upstream)"),
    ("clahe-5.0-8x8 (enhanced upstream)", "clahe-5.0-8x8 (enhanced upstream)"),
    ("clahe-2.5-4x4", "clahe-2.5-4x4 (enhanced upstream)"),
])
def test_copy_names_are_canonical(text, name):
    assert parse_copy(text) == name


@pytest.mark.parametrize("text", ["", "clahe", "clahe-5-8x4", "clahe-0-8x8", "enhanced",
                                  "original copy"])
def test_other_copy_names_are_refused(text):
    with pytest.raises(KoaError, match="not a copy name"):
        parse_copy(text)


def _knee(rng, size=48):
    """A small knee-like 8-bit image: a bright blob on a dark field, noise, low contrast."""
    yy, xx = np.mgrid[:size, :size]
    blob = np.exp(-((yy - size / 2) ** 2 + (xx - size / 2) ** 2) / (2 * (size / 4) ** 2))
    img = 60 + 80 * blob + rng.normal(0, 6, (size, size))
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture()
def copies(tmp_path):
    """Two copies of one small dataset: the originals, and every image through CLAHE
    clip 5.0, 8x8 (how the copy the first campaigns trained on was made)."""
    rng = np.random.default_rng(0)
    orig, enh = tmp_path / "orig", tmp_path / "enh"
    for split, n in (("train", 2), ("val", 3)):
        for g in range(5):
            for d in (orig, enh):
                (d / split / str(g)).mkdir(parents=True)
            for i in range(n):
                name = f"{9000000 + g * 10 + i + (0 if split == 'train' else 5)}L.png"
                img = _knee(rng)
                cv2.imwrite(str(orig / split / str(g) / name), img)
                enhanced = cv2.createCLAHE(clipLimit=5.0, tileGridSize=(8, 8)).apply(img)
                cv2.imwrite(str(enh / split / str(g) / name), enhanced)
    return orig, enh


def _record_made_on(root, tmp_path, name):
    """A record whose provenance holds what koa campaign stored for ``root``: the digest
    of the validation views prepared exactly as the campaign prepares them, and no
    data.copy (written before it existed)."""
    from koa_core.config import config_to_dict, load_config
    from koa_core.data.cache import views_digest
    from koa_core.train.engine import prepare_data

    cfg = load_config("demo", [f"data.root={root}", "data.image_size=32",
                               f"data.cache_dir={tmp_path / 'cache'}", "train.seed=1"])
    data = prepare_data(cfg)
    run = tmp_path / f"run-{name}"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg)))
    (run / "history.csv").write_text("epoch,val_macro_f1\n1,0.2\n")
    (run / "best.json").write_text(json.dumps({"epoch": 1, "select_metric": "macro_f1"}))
    rows = [{"path": f"val/{r.grade}/x{i}.png", "patient": "", "knee": "", "grade": r.grade,
             "pred": r.grade, **{f"p{g}": "1.0" if g == r.grade else "0.0" for g in range(5)},
             "gate_raw": "", "gate_clahe": ""} for i, r in enumerate(data.val.records)]
    prov = {"name": name, "commit": "abc", "command": "koa campaign t",
            "machine": {"hardware": "CPU test"},
            "data": {"name": "test copy", "copy": "original", "encoding": "as stored",
                     "val_views_blake2b": views_digest(data.val.views)},
            "wall_s": 1.0, "train_img_s": 1.0}
    rec = write_record(tmp_path / "records" / name, run, rows, prov, n_boot=10)
    prov = json.loads((rec / PROVENANCE).read_text())
    del prov["data"]["copy"]
    (rec / PROVENANCE).write_text(json.dumps(prov, indent=1) + "\n")
    assert "data.copy missing" in check_record(rec)[0]
    return rec


def test_stamp_names_each_copy_from_its_validation_pixels(copies, tmp_path, capsys):
    orig, enh = copies
    old = _record_made_on(enh, tmp_path, "old-s1")
    new = _record_made_on(orig, tmp_path, "new-s1")
    assert main(["stamp", str(tmp_path / "records"), "--data", str(orig)]) == 0
    assert "stamped 2 record(s)" in capsys.readouterr().out
    for rec, copy in ((old, "clahe-5.0-8x8 (enhanced upstream)"), (new, "original")):
        assert check_record(rec) == []
        data = json.loads((rec / PROVENANCE).read_text())["data"]
        assert data["copy"] == copy
        assert str(orig) in data["copy_evidence"] and "koa stamp" in data["copy_evidence"]


def test_stamp_with_the_wrong_data_is_refused_and_writes_nothing(copies, tmp_path, capsys):
    orig, enh = copies
    good = _record_made_on(enh, tmp_path, "good-s1")
    bad = _record_made_on(enh, tmp_path, "bad-s1")
    prov = json.loads((bad / PROVENANCE).read_text())
    prov["data"]["val_views_blake2b"] = "0" * 32  # made from other pixels
    (bad / PROVENANCE).write_text(json.dumps(prov, indent=1) + "\n")
    before = (good / PROVENANCE).read_text()
    assert main(["stamp", str(tmp_path / "records"), "--data", str(orig)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("koa: error: ") and err.count("\n") == 1
    assert "bad-s1" in err and "matches neither" in err and "nothing stamped" in err
    assert (good / PROVENANCE).read_text() == before  # all or nothing
    # fixed, the same command stamps both
    prov["data"]["val_views_blake2b"] = json.loads(before)["data"]["val_views_blake2b"]
    (bad / PROVENANCE).write_text(json.dumps(prov, indent=1) + "\n")
    assert main(["stamp", str(tmp_path / "records"), "--data", str(orig)]) == 0
    assert "stamped 2 record(s): data.copy clahe-5.0-8x8" in capsys.readouterr().out
    assert check_record(good) == [] and check_record(bad) == []


def test_stamp_needs_records_and_a_data_root(tmp_path, capsys):
    assert main(["stamp", str(tmp_path), "--data", str(tmp_path)]) == 2
    assert "no records" in capsys.readouterr().err
    assert main(["stamp", str(tmp_path), "--data", str(tmp_path / "nope")]) == 2
    assert "no such folder" in capsys.readouterr().err
