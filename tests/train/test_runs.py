"""koa_core.train.runs / `koa runs`: the selected epoch's figures and throughput of run folders."""

import csv
import json
import shutil

import pytest

from koa_core.cli import main
from koa_core.errors import KoaError
from koa_core.train.runs import format_runs, summarize_run


def test_summary_matches_history_and_sidecar(tiny_run):
    run, _ = tiny_run
    s = summarize_run(run)
    side = json.loads((run / "best.json").read_text())
    rows = list(csv.DictReader(open(run / "history.csv")))
    chosen = rows[side["epoch"] - 1]
    assert s["epochs"] == len(rows) == 2 and s["selected"] == side["epoch"]
    assert s["val_macro_f1"] == pytest.approx(float(chosen["val_macro_f1"]))
    assert s["val_macro_f1"] == pytest.approx(side["val_metrics"]["macro_f1"])
    assert s["val_accuracy"] == pytest.approx(side["val_metrics"]["accuracy"])
    assert s["train_seconds"] == pytest.approx(sum(float(r["epoch_s"]) for r in rows))
    assert s["train_img_s"] == pytest.approx(float(rows[1]["train_img_s"]))  # epochs 2+
    assert s["data_wait_s"] >= 0
    assert s["gpu_util"] is None  # trained on a CPU: no utilisation recorded
    table = format_runs([s, s])
    assert len(table.splitlines()) == 5 and "CPU" in table  # head, 2 runs, hardware, note


def test_cli_runs_json(tiny_run, capsys):
    run, _ = tiny_run
    assert main(["runs", str(run), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["run"] for r in rows] == [run.name]


def test_unfinished_run_is_one_error_line(tmp_path, tiny_run, capsys):
    run, _ = tiny_run
    half = tmp_path / "half"
    half.mkdir()
    shutil.copy(run / "history.csv", half)  # no best.json
    with pytest.raises(KoaError, match="not a finished run folder"):
        summarize_run(half)
    assert main(["runs", str(half)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("koa: error:")
