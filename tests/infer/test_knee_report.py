"""Per-knee explanation picture and the batch's static HTML page (``--report DIR``)."""

import ast
import inspect
from html.parser import HTMLParser

import cv2
import numpy as np
import pytest
from matplotlib.colors import to_rgba

from koa_core import GRADE_NAMES
from koa_core.infer import knee_report
from koa_core.infer.knee_report import (
    CAM_LABEL,
    PREDICTED_COLOR,
    KneeReport,
    build_figure,
    index_entry,
    render_report,
    write_html_index,
)

PROBS = [0.05, 0.13, 0.62, 0.17, 0.03]


def _image(h=64, w=64):
    yy, xx = np.mgrid[0:h, 0:w]
    return (100 + 80 * np.exp(-((xx - w / 2) / (w / 5)) ** 2) + 30 * np.sin(yy / 5)).astype(
        np.uint8)


def _cam(h=64, w=64, cy=0.5, cx=0.5):
    yy, xx = np.mgrid[0:h, 0:w]
    return np.exp(-(((yy - cy * h) / (h / 6)) ** 2 + ((xx - cx * w) / (w / 6)) ** 2)).astype(
        np.float32)


def _report(h=64, w=64, **kw):
    args = dict(name="knee_0042.dcm", image=_image(h, w), probabilities=PROBS, grade=2,
                gate=(0.62, 0.38), cams={"raw": _cam(h, w), "clahe": _cam(h, w, 0.6, 0.6)},
                details={"pixel spacing": "0.14 x 0.14 mm", "precision": "fp32"})
    args.update(kw)
    return KneeReport(**args)


def _axes(fig):
    return {ax.get_label(): ax for ax in fig.axes}


def _all_text(fig):
    texts = [t.get_text() for t in fig.texts]
    for ax in fig.axes:
        texts += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
        texts += [t.get_text() for t in ax.texts]
    return texts


def test_png_written_readable_and_sized(tmp_path):
    out = render_report(_report(), tmp_path / "knee.png", dpi=50)
    assert out == tmp_path / "knee.png"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["knee.png"]  # nothing else
    img = cv2.imread(str(out))
    assert img is not None
    h, w = img.shape[:2]
    assert abs(w - 14 * 50) <= 2 and abs(h - 4.2 * 50) <= 2
    assert img.std() > 10  # not a blank canvas


def test_picture_changes_with_the_cam_and_only_there(tmp_path):
    a = cv2.imread(str(render_report(_report(), tmp_path / "a.png", dpi=50)))
    a2 = cv2.imread(str(render_report(_report(), tmp_path / "a2.png", dpi=50)))
    moved = _report(cams={"raw": _cam(cy=0.2, cx=0.8), "clahe": _cam(cy=0.6, cx=0.6)})
    b = cv2.imread(str(render_report(moved, tmp_path / "b.png", dpi=50)))
    assert np.array_equal(a, a2)  # rendering is deterministic, so a difference is real
    diff = np.abs(a.astype(int) - b.astype(int)).sum(axis=2) > 0
    assert diff.sum() > 200
    # the change is confined to the raw-stream panel: left of the figure's middle
    cols = np.nonzero(diff.any(axis=0))[0]
    assert cols.min() > a.shape[1] * 0.1 and cols.max() < a.shape[1] * 0.5


def test_texts_bars_and_gate():
    fig = build_figure(_report(clahe_image=_image()[::-1].copy()))
    axes = _axes(fig)
    assert set(axes) >= {"image", "cam_raw", "cam_clahe", "probabilities"}
    assert axes["image"].get_title() == "knee_0042.dcm\n64 x 64 px"
    assert axes["cam_raw"].get_title() == "Raw stream: where it looked"
    assert axes["cam_clahe"].get_title() == "CLAHE stream: where it looked"
    bars = axes["probabilities"]
    assert bars.get_title() == "Predicted: KL2 minimal (62%)"
    assert bars.get_xlim() == (0.0, 1.0)
    assert [t.get_text() for t in bars.get_yticklabels()] == list(GRADE_NAMES)
    rects = bars.patches
    assert len(rects) == 5
    assert [r.get_width() for r in rects] == pytest.approx(PROBS)
    colors = [r.get_facecolor() for r in rects]
    assert colors[2] == to_rgba(PREDICTED_COLOR)
    assert all(c != colors[2] for k, c in enumerate(colors) if k != 2)
    assert [t.get_text() for t in bars.texts][:5] == ["5%", "13%", "62%", "17%", "3%"]
    texts = _all_text(fig)
    assert "Stream weights: raw 0.62, CLAHE 0.38" in texts
    assert texts.count(CAM_LABEL) == 2  # one colour scale per map
    assert any("pixel spacing: 0.14 x 0.14 mm" in t and "precision: fp32" in t for t in texts)
    assert any("not a diagnosis" in t.get_text() for t in fig.texts)


def test_highlight_follows_the_grade_not_the_maximum():
    fig = build_figure(_report(grade=3))
    bars = _axes(fig)["probabilities"]
    assert bars.get_title() == "Predicted: KL3 moderate (17%)"
    colors = [r.get_facecolor() for r in bars.patches]
    assert [k for k, c in enumerate(colors) if c == to_rgba(PREDICTED_COLOR)] == [3]


def test_single_stream_renders_without_gate(tmp_path):
    rep = _report(gate=None, cams={"clahe": _cam()})
    fig = build_figure(rep)
    axes = _axes(fig)
    assert "cam_raw" not in axes and "cam_clahe" in axes
    assert "(drawn over the input image)" in axes["cam_clahe"].get_title()
    assert not any("Stream weights" in t for t in _all_text(fig))
    assert cv2.imread(str(render_report(rep, tmp_path / "s.png", dpi=40))) is not None


@pytest.mark.parametrize("h,w", [(300, 500), (32, 32)])
def test_non_square_and_tiny_images(tmp_path, h, w):
    rep = _report(h, w, clahe_image=_image(h, w)[::-1].copy(), name="a $x$ <b>.png")
    fig = build_figure(rep)
    assert _axes(fig)["image"].get_title() == f"a $x$ <b>.png\n{h} x {w} px"
    assert _axes(fig)["cam_clahe"].get_title() == "CLAHE stream: where it looked"
    img = cv2.imread(str(render_report(rep, tmp_path / "r.png", dpi=40)))
    assert img is not None and img.shape[:2] == (168, 560)


@pytest.mark.parametrize("change,match", [
    ({"cams": {"raw": np.zeros((32, 64), np.float32)}}, "raw Grad-CAM has shape"),
    ({"cams": {"depth": _cam()}}, "unknown Grad-CAM stream"),
    ({"cams": {"raw": np.full((64, 64), np.nan, np.float32)}}, "NaN"),
    ({"clahe_image": np.zeros((64, 32), np.uint8)}, "clahe_image has shape"),
    ({"probabilities": [0.5, 0.5]}, "5 values"),
    ({"probabilities": [0.9, 0.9, 0.0, 0.0, 0.0]}, "add up to 1"),
    ({"grade": 5}, "grade"),
    ({"gate": (0.7, 0.7)}, "gate"),
    ({"image": np.zeros((8, 8, 3), np.uint8)}, "grayscale"),
])
def test_invalid_inputs_raise(tmp_path, change, match):
    with pytest.raises(ValueError, match=match):
        render_report(_report(**change), tmp_path / "x.png")
    assert not list(tmp_path.iterdir())


class _Rows(HTMLParser):
    def __init__(self):
        super().__init__()
        self.in_body = False
        self.rows = []
        self.tags = set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        if tag == "tbody":
            self.in_body = True
        if tag == "tr" and self.in_body and dict(attrs).get("class") in ("ok", "failed"):
            self.rows.append(dict(attrs)["class"])

    def handle_endtag(self, tag):
        if tag == "tbody":
            self.in_body = False


def test_html_index(tmp_path):
    entries = [
        index_entry(_report(), "knee_0042.png"),
        {"name": "<b>&bad.dcm", "picture": None, "grade": None, "probabilities": None,
         "gate": None, "error": "cannot read DICOM: <truncated> & broken"},
        {"name": "single.png", "picture": "single #1.png", "grade": 4,
         "probabilities": [0.0, 0.0, 0.01, 0.04, 0.95], "gate": None, "error": None},
    ]
    path = write_html_index(entries, tmp_path / "rep", title="Batch <1>")
    assert path == tmp_path / "rep" / "index.html"
    text = path.read_text(encoding="utf-8")
    parser = _Rows()
    parser.feed(text)
    assert parser.rows == ["ok", "failed", "ok"]
    assert '<meta charset="utf-8">' in text
    assert "<b>&bad" not in text and "&lt;b&gt;&amp;bad.dcm" in text
    assert "<title>Batch &lt;1&gt;</title>" in text
    assert "cannot read DICOM: &lt;truncated&gt; &amp; broken" in text
    assert 'class="error"' in text and "color: #c00000" in text
    assert "KL2 minimal" in text and "(62%)" in text and "KL4 severe" in text
    assert "raw 0.62, CLAHE 0.38" in text and "single stream" in text
    assert '<img src="knee_0042.png" width="320"' in text
    assert 'href="single%20%231.png"' in text  # '#' cannot turn into a fragment
    for pct in ("5%", "13%", "17%", "3%", "95%"):
        assert f"<td>{pct}</td>" in text
    lowered = text.lower()
    assert "http" not in lowered and "<script" not in lowered and "<link" not in lowered
    assert "script" not in parser.tags and "Kellgren-Lawrence" in text
    assert "1 failed" in text


def test_html_rejects_bad_entries_before_writing(tmp_path):
    with pytest.raises(ValueError, match="5 values"):
        write_html_index([{"name": "a", "grade": 1, "probabilities": [1.0]}], tmp_path)
    assert not (tmp_path / "index.html").exists()


def test_never_uses_pyplot():
    """Figure + Agg canvas only: no global figure/backend state, safe in threads."""
    tree = ast.parse(inspect.getsource(knee_report))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported |= {f"{node.module}.{a.name}" for a in node.names} | {node.module}
    assert "matplotlib.figure.Figure" in imported
    assert "matplotlib.backends.backend_agg.FigureCanvasAgg" in imported
    assert not any("pyplot" in name for name in imported)
