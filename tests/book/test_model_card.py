"""The shipped checkpoint's model card: every section, its numbers read from the files."""

import json
from pathlib import Path

from koa_core.book.model_card import grade_table, model_card_markdown
from koa_core.model.checkpoint import DEFAULT_CHECKPOINT

RESULTS = Path(__file__).resolve().parents[2] / "results"


def test_the_card_reads_its_numbers_from_the_sidecar_and_the_records():
    ev = json.loads((RESULTS / "gpu" / "shipped-val-cpu.json").read_text())
    text = model_card_markdown(DEFAULT_CHECKPOINT, RESULTS / "gpu" / "shipped-val-cpu.json",
                               RESULTS / "data-stats.json")
    for head in ("## Intended use", "## Model and training", "## How it grades",
                 "## How sure it is", "## The input check", "## Known failure modes",
                 "## Licence and citation"):
        assert head in text
    assert f"accuracy {100 * ev['accuracy']:.2f}" in text
    assert "not a medical device" in text and "CC BY 4.0" in text
    worst = min(range(5), key=lambda g: ev["per_class"][str(g)]["recall"])
    assert f"**KL{worst} and" in text


def test_the_card_says_so_where_nothing_is_calibrated(tmp_path):
    side = json.loads(Path(DEFAULT_CHECKPOINT).with_suffix(".json").read_text())
    side.pop("calibration", None)
    side.pop("conformal", None)
    (tmp_path / "m.json").write_text(json.dumps(side))
    text = model_card_markdown(tmp_path / "m.safetensors", RESULTS / "gpu" / "shipped-val-cpu.json",
                               tmp_path / "missing.json")
    assert "none stored" in text and "no conformal calibration stored" in text


def test_grade_table_intervals_hold_the_point_and_match_sklearn():
    from sklearn.metrics import precision_recall_fscore_support

    cm = [[50, 5, 0, 0, 0], [10, 20, 5, 0, 0], [0, 5, 30, 5, 0], [0, 0, 4, 16, 2], [0, 0, 0, 1, 6]]
    t = grade_table(cm)
    y = [g for g in range(5) for h in range(5) for _ in range(cm[g][h])]
    p = [h for g in range(5) for h in range(5) for _ in range(cm[g][h])]
    prec, rec, f1, _ = precision_recall_fscore_support(y, p)
    for g in range(5):
        for col, ref in (("precision", prec), ("recall", rec), ("F1", f1)):
            value, lo, hi = (float(v) for v in t.loc[g, col].replace("[", "").replace(
                "]", "").replace(",", "").split())
            assert abs(value - ref[g]) < 5e-4 and lo <= value <= hi
