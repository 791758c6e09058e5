"""Result records (paper §3): complete, self-consistent, refused when tampered with."""

import csv
import json

import numpy as np
import pytest
import yaml

from koa_core.data.index import Record
from koa_core.errors import KoaError
from koa_core.experiments.records import (
    PROVENANCE,
    check_record,
    find_records,
    predictions_table,
    read_record,
    write_record,
)


def _fake_run(tmp_path, name="run"):
    """The files a finished run folder holds (what engine.fit writes)."""
    run = tmp_path / name
    run.mkdir(exist_ok=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"train": {"seed": 1}}))
    (run / "history.csv").write_text("epoch,val_macro_f1\n1,0.2\n2,0.4\n3,0.3\n")
    (run / "best.json").write_text(json.dumps({"epoch": 2, "select_metric": "macro_f1"}))
    return run


def _provenance(name="r-s1", copy="original"):
    return {"name": name, "commit": "abc123", "command": "koa campaign table5",
            "machine": {"hardware": "CPU test"},
            "data": {"encoding": "as stored", **({"copy": copy} if copy else {})},
            "wall_s": 1.0, "train_img_s": 10.0}


def make_record(tmp_path, y, pred, name="r-s1", gates=True, seed=0, flip=None,
                copy="original"):
    """A record of a run whose selected checkpoint predicted ``pred`` for grades ``y``."""
    rng = np.random.default_rng(seed)
    y, pred = np.asarray(y), np.asarray(pred)
    probs = rng.dirichlet(np.ones(5), size=len(y)) * 0.5
    probs[np.arange(len(y)), pred] += 0.5  # pred is the most probable grade
    recs = [Record(path=str(tmp_path / "data" / "val" / str(g) / f"{9000000 + i}L.png"),
                   grade=int(g), split="val", patient=str(9000000 + i), side="L")
            for i, g in enumerate(y)]
    g = np.stack([np.full(len(y), 0.3), np.full(len(y), 0.7)], 1) if gates else None
    rows = predictions_table(recs, probs, g, tmp_path / "data", flip)
    run = _fake_run(tmp_path, f"run-{name}")
    return write_record(tmp_path / "records" / name, run, rows, _provenance(name, copy),
                        n_boot=50)


def test_written_record_is_complete_and_recomputes(tmp_path):
    y = [0, 1, 2, 3, 4] * 6
    pred = [0, 1, 2, 2, 4] * 6
    rec = make_record(tmp_path, y, pred)
    assert check_record(rec) == []
    r = read_record(rec)
    m = r["selected"]["val_metrics"]
    assert m["n"] == 30 and m["accuracy"] == pytest.approx(0.8)
    assert r["selected"]["epoch"] == 2
    assert r["predictions"]["path"][0] == "val/0/9000000L.png"  # relative to the data root
    assert np.allclose(r["predictions"]["gate_raw"], 0.3)
    assert find_records(tmp_path / "records") == [rec]


def _rewrite_predictions(rec, change):
    path = rec / "val_predictions.csv"
    rows = list(csv.DictReader(open(path)))
    change(rows)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _rehash(rec):
    import hashlib
    prov = json.loads((rec / PROVENANCE).read_text())
    for name in prov["files"]:
        prov["files"][name] = hashlib.sha256((rec / name).read_bytes()).hexdigest()
    (rec / PROVENANCE).write_text(json.dumps(prov))


def test_tampered_predictions_are_caught(tmp_path):
    rec = make_record(tmp_path, [0, 1, 2, 3, 4] * 4, [0, 1, 2, 3, 4] * 4)

    def flip_first(rows):
        rows[0]["pred"], rows[0]["p0"], rows[0]["p4"] = "4", rows[0]["p4"], rows[0]["p0"]

    _rewrite_predictions(rec, flip_first)
    assert any("does not match the hash" in p for p in check_record(rec))
    _rehash(rec)  # a consistent-looking edit: the stored metrics no longer recompute
    problems = check_record(rec)
    assert any("accuracy" in p and "does not recompute" in p for p in problems)
    assert any("confusion matrix" in p for p in problems)
    with pytest.raises(KoaError):
        read_record(rec)


def test_pred_must_be_the_most_probable_grade(tmp_path):
    rec = make_record(tmp_path, [0, 1, 2, 3, 4] * 4, [0, 1, 2, 3, 4] * 4)
    _rewrite_predictions(rec, lambda rows: rows[1].update(p1="0.000001", p2="0.999999",
                                                          p0="0", p3="0", p4="0"))
    _rehash(rec)
    assert any("most probable" in p for p in check_record(rec))


def test_missing_provenance_or_files_make_a_record_incomplete(tmp_path):
    rec = make_record(tmp_path, [0, 1, 2, 3, 4], [0, 1, 2, 3, 4])
    prov = json.loads((rec / PROVENANCE).read_text())
    prov["machine"] = {}
    prov["commit"] = ""
    (rec / PROVENANCE).write_text(json.dumps(prov))
    problems = check_record(rec)
    assert any("commit" in p for p in problems) and any("hardware" in p for p in problems)
    (rec / PROVENANCE).unlink()
    assert check_record(rec) and "incomplete" in check_record(rec)[0]
    assert find_records(tmp_path / "records") == []


def test_write_refuses_incomplete_provenance(tmp_path):
    run = _fake_run(tmp_path)
    prov = _provenance()
    del prov["command"]
    rec = Record(path="x.png", grade=0, split="val")
    rows = predictions_table([rec], np.eye(5)[:1], None, None)
    with pytest.raises(KoaError, match="command"):
        write_record(tmp_path / "rec", run, rows, prov)
    assert not (tmp_path / "rec").exists()


def test_selected_epoch_must_be_in_history(tmp_path):
    rec = make_record(tmp_path, [0, 1, 2, 3, 4], [0, 1, 2, 3, 4])
    (rec / "history.csv").write_text("epoch,val_macro_f1\n1,0.2\n")
    _rehash(rec)
    assert any("selected epoch 2" in p for p in check_record(rec))


def test_flip_tta_probabilities_travel_in_the_record(tmp_path):
    y = [0, 1, 2, 3, 4] * 4
    flip = np.random.default_rng(3).dirichlet(np.ones(5), size=len(y))
    rec = make_record(tmp_path, y, y, name="f-s1", flip=flip)
    assert check_record(rec) == []
    got = read_record(rec)["predictions"]["probs_flip"]
    assert got.shape == (20, 5) and np.abs(got - flip).max() < 1e-6
    plain = make_record(tmp_path, y, y, name="g-s1")
    assert read_record(plain)["predictions"]["probs_flip"] is None


def test_a_record_write_cut_short_leaves_the_previous_record_intact(tmp_path):
    import resource
    import signal

    y = [0, 1, 2, 3, 4] * 40
    rec = make_record(tmp_path, y, y, name="r-s1")
    before = {p.name: p.read_bytes() for p in rec.iterdir()}
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (2_000, hard))  # the predictions need more
    try:
        with pytest.raises(KoaError, match="could not be written.*previous record"):
            make_record(tmp_path, y, [4] * len(y), name="r-s1", seed=1)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)
    assert check_record(rec) == []
    assert {p.name: p.read_bytes() for p in rec.iterdir()} == before
    assert not [p for p in rec.parent.iterdir() if p.name.startswith(".r-s1")]


def _strip_copy(rec):
    """The record as written before data.copy existed (the committed GPU records were)."""
    prov = json.loads((rec / PROVENANCE).read_text())
    del prov["data"]["copy"]
    (rec / PROVENANCE).write_text(json.dumps(prov, indent=1) + "\n")


def test_a_new_record_must_name_its_data_copy(tmp_path):
    y = [0, 1, 2, 3, 4] * 2
    with pytest.raises(KoaError, match="provenance lacks data.copy"):
        make_record(tmp_path, y, y, copy=None)
    assert not (tmp_path / "records" / "r-s1").exists()
    with pytest.raises(KoaError, match="not a copy name"):
        make_record(tmp_path, y, y, copy="enhanced, I think")
    # given in words, stored by its one canonical name
    rec = make_record(tmp_path, y, y, copy="clahe-5-8x8")
    assert read_record(rec)["provenance"]["data"]["copy"] == "clahe-5.0-8x8 (enhanced upstream)"


def test_a_record_lacking_its_data_copy_fails_the_check_but_stays_readable(tmp_path):
    from koa_core.experiments.records import record_copy

    y = [0, 1, 2, 3, 4] * 2
    rec = make_record(tmp_path, y, y)
    _strip_copy(rec)
    problems = check_record(rec)
    assert len(problems) == 1 and "data.copy missing" in problems[0] \
        and "koa stamp" in problems[0]
    assert check_record(rec, require_copy=False) == []
    r = read_record(rec)  # old records are read until stamped, their copy unknown
    assert record_copy(r["provenance"]) is None


def test_stamp_copy_adds_the_copy_and_keeps_the_record_whole(tmp_path):
    from koa_core.experiments.records import stamp_copy

    y = [0, 1, 2, 3, 4] * 2
    rec = make_record(tmp_path, y, y)
    _strip_copy(rec)
    before = json.loads((rec / PROVENANCE).read_text())
    stamp_copy(rec, "clahe-5.0-8x8 (enhanced upstream)", "checked")
    after = json.loads((rec / PROVENANCE).read_text())
    assert check_record(rec) == []
    assert after["data"]["copy"] == "clahe-5.0-8x8 (enhanced upstream)"
    assert after["data"]["copy_evidence"] == "checked"
    del after["data"]["copy"], after["data"]["copy_evidence"]
    assert after == before  # nothing else changed
    assert [p.name for p in rec.iterdir() if p.name.startswith(".")] == []  # no temp file


def test_run_names_split_into_plan_row_and_seed_and_back():
    from koa_core.experiments.records import run_name, split_run_name

    assert split_run_name("dual-noattn-s3") == ("dual-noattn", 3)
    assert split_run_name("a-s1-s12") == ("a-s1", 12)  # the last -sSEED is the seed
    assert split_run_name("recipe") == ("recipe", None)
    assert split_run_name("raw-sx") == ("raw-sx", None)
    assert split_run_name(run_name("proposed", 2)) == ("proposed", 2)
