"""Chapter 5 (koa_core.report.ablation): the source of its numbers is decided once, and each
section shows only what its source gives."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from test_report_published import Y, make_records  # noqa: E402

from koa_core.data.index import discover  # noqa: E402
from koa_core.paper import TABLE1, TEST_KNEES  # noqa: E402
from koa_core.report import ablation, published  # noqa: E402


def test_from_records_the_sections_are_the_records_and_nothing_trains(tmp_path, monkeypatch):
    monkeypatch.setattr(ablation, "run_ablation", lambda *a, **k: 1 / 0)
    root = make_records(tmp_path)
    ch = ablation.ablation_chapter(tmp_path, str(root), "", ["demo"], [], [])
    note, table5, claims = ch.table5()
    assert note == published.records_note(published.load_records(root))
    pd.testing.assert_frame_equal(table5, published.table5_table(root)[0])
    assert "raw - clahe" in set(claims["difference"])
    assert plt.get_fignums()  # Table 5's figure, drawn by the section that shows it
    plt.close("all")
    frame, shared, prov = ch.selection()
    assert isinstance(frame, pd.DataFrame) and isinstance(shared, str)
    assert ch.trained() == []
    assert ch.val_knees() == len(Y)  # the records' validation knees
    assert ch.split_sizes() == [len(Y), TEST_KNEES]
    assert f"{TEST_KNEES:,} test knees in the paper, {len(Y)} validation knees here" \
        in ch.sizes_text()
    assert "a gain of 1.59 points (cross-attention)" in ch.gain_text()


def test_without_records_the_configurations_train_here(phantom_root, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(ablation, "run_ablation",
                        lambda *a, **k: calls.append((a, k)) or pd.DataFrame({"x": [1]}))
    monkeypatch.setattr(ablation, "ablation_figure", lambda t, label: calls.append(label))
    ch = ablation.ablation_chapter(phantom_root, "", str(tmp_path), ["demo"], [],
                                   ["ablation-raw"])
    assert ch.table5() == [] and ch.selection() == []
    (table,) = ch.trained()
    assert list(table["x"]) == [1]
    assert calls[0][0] == (str(tmp_path), ["demo"], [], phantom_root, ["ablation-raw"])
    assert calls[0][1]["labels"] == ablation.EXTRA_ROWS
    assert calls[1] == f"ours ({phantom_root.name})"
    n_test = len(discover(phantom_root).split("test"))
    assert ch.split_sizes() == [n_test, sum(TABLE1["val"]), TEST_KNEES]
    assert ch.interval_lines()[-1] == "n =  1656: accuracy 0.70 +- 2.2 points"
    assert "826 validation knees here" in ch.sizes_text()
