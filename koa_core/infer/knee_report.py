"""One explanation picture per knee, and a static HTML page for a batch (``--report DIR``).

How to read the picture (one row, left to right):

1. **The input image** as the file holds it (gray), titled with the file name and its size
   in pixels. Every image of the picture is drawn from a copy at most
   :data:`PICTURE_SIDE` pixels on its long side (:func:`shrink`, area-averaged): the
   picture is a few hundred pixels wide, and drawing a 64-megapixel knee at full
   resolution cost gigabytes of float copies.
2. **Raw stream: where it looked** - the Grad-CAM map of the raw view (paper §3.1, Fig. 7)
   drawn in colour over the image. Red/yellow = the regions that raised the score of the
   predicted grade most, blue = regions the decision hardly used. The colour scale under
   it runs from 0 (ignored) to 1 (most used); each map is scaled to its own maximum, so
   colours compare regions within one map, not between knees.
3. **CLAHE stream: where it looked** - the same for the contrast-enhanced (CLAHE) view,
   drawn over that view when it is given, otherwise over the input image.
4. **The grade**: a bar per Kellgren-Lawrence grade (KL0 healthy ... KL4 severe) with the
   model's probability of it; the predicted grade's bar has its own colour and the title
   says "Predicted: KL2 minimal (62%)"; where the checkpoint carries conformal sets
   (``koa calibrate``), the set's bars are outlined and named under it, "Set KL1–KL3 at
   90 %".
5. **The gate** (paper §2.4c): under the bars, "Stream weights: raw 0.62, CLAHE 0.38" -
   how much each view counted in the fused features (they add up to 1). Single-stream
   models have no gate and no such line, and only their own stream's map.

At the bottom: extra details (pixel spacing, precision, model ...) in small text and a
one-sentence caption. The model is a research tool, not a diagnosis.

Drawing uses ``matplotlib.figure.Figure`` with the Agg canvas, never ``pyplot``: no global
state (current figure, backend, rcParams) is touched, so it is safe in threads and in a
process that uses pyplot for something else. User text (file names, details) is drawn
with ``parse_math=False`` so a ``$`` in a file name is shown as is.

:func:`write_html_index` writes ``index.html`` for a batch: one table row per file with
the grade (and its set), the five probabilities, the gate weights and a thumbnail linked to
the picture
(or the error, in red, for a file that failed). The page is self-contained: inline CSS,
no JavaScript, no external resources; every piece of text is HTML-escaped.
"""

from __future__ import annotations

import html
import math
import textwrap
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import cv2
import numpy as np

from koa_core import GRADE_NAMES
from koa_core.metrics.conformal import grades_label

__all__ = ["CAM_LABEL", "CAPTION", "PICTURE_SIDE", "KneeReport", "build_figure", "index_entry",
           "render_report", "shrink", "write_html_index"]

STREAMS = ("raw", "clahe")
STREAM_TITLES = {"raw": "Raw stream: where it looked", "clahe": "CLAHE stream: where it looked"}
CAM_LABEL = "Grad-CAM (0 = ignored, 1 = most used)"
CAPTION = ("Grad-CAM shows the image regions that raised the predicted grade's score in each "
           "stream; the model is a research tool, not a diagnosis.")
CAPTION_NO_CAM = "The model is a research tool, not a diagnosis."
FIGSIZE = (14.0, 4.2)
CAM_ALPHA = 0.45
PREDICTED_COLOR = "#d62728"
OTHER_COLOR = "#a6b4c4"
SET_COLOR = "#1f77b4"  # the outline of the set of grades
_SUM_TOL = 1e-2  # probabilities / gate weights must add up to 1 within this (fp16 softmax)
_NAME_CHARS = 40  # longer file names are shortened in the middle in the picture's title
PICTURE_SIDE = 1024  # the long side of the copy every picture (and --cam file) is drawn from


@dataclass
class KneeReport:
    """Everything one knee's picture shows (see the module docstring)."""

    name: str                       # file name shown as the title, e.g. "knee_0042.dcm"
    image: np.ndarray               # grayscale (H, W), uint8, at the file's own resolution
    probabilities: Sequence[float]  # 5 values, KL0..KL4
    grade: int
    gate: Sequence[float] | None    # (w_raw, w_clahe), None for single-stream models
    cams: dict[str, np.ndarray]     # {"raw": map, "clahe": map}, each (H, W) in [0, 1]
    clahe_image: np.ndarray | None = None  # the CLAHE view (H, W), drawn under its map
    details: dict[str, str] = field(default_factory=dict)  # extra "key: value" lines
    size: tuple[int, int] | None = None  # (H, W) as read, when ``image`` is a smaller copy
    grade_set: Sequence[int] | None = None  # the conformal set of grades (koa calibrate)
    set_coverage: float | None = None  # ... and the share of knees it is calibrated to hold


def shrink(image: np.ndarray, box: tuple[int, int, int, int] | None = None,
           side: int = PICTURE_SIDE) -> tuple[np.ndarray, tuple[int, int, int, int] | None]:
    """A copy of a 2-D image (or map) at most ``side`` pixels on its long side,
    area-averaged, and the crop box ``(top, left, height, width)`` in its pixels (its edges
    scaled); the image itself, and the box, when it is small enough already."""
    h, w = image.shape[:2]
    if max(h, w) <= side:
        return image, box
    scale = side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))  # (width, height)
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    if box is None:
        return small, None
    sy, sx = size[1] / h, size[0] / w
    top, left = min(round(box[0] * sy), size[1] - 1), min(round(box[1] * sx), size[0] - 1)
    bottom, right = round((box[0] + box[2]) * sy), round((box[1] + box[3]) * sx)
    return small, (top, left, max(1, bottom - top), max(1, right - left))


# ---------------------------------------------------------------------------- validation

def _check_probabilities(probabilities, what: str = "probabilities") -> list[float]:
    try:
        p = [float(v) for v in probabilities]
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be 5 numbers (KL0..KL4), got {probabilities!r}") from None
    if len(p) != len(GRADE_NAMES):
        raise ValueError(f"{what} must have {len(GRADE_NAMES)} values (KL0..KL4), "
                         f"got {len(p)}")
    if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in p):
        raise ValueError(f"{what} must be finite values in [0, 1], got {p}")
    if abs(sum(p) - 1.0) > _SUM_TOL:
        raise ValueError(f"{what} must add up to 1, got {sum(p):.4f}")
    return p


def _check_gate(gate) -> list[float] | None:
    if gate is None:
        return None
    try:
        g = [float(v) for v in gate]
    except (TypeError, ValueError):
        raise ValueError(f"gate must be (w_raw, w_clahe) or None, got {gate!r}") from None
    if len(g) != 2:
        raise ValueError(f"gate must be (w_raw, w_clahe) or None, got {len(g)} values")
    if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in g) or abs(sum(g) - 1) > _SUM_TOL:
        raise ValueError(f"gate weights must be in [0, 1] and add up to 1, got {g}")
    return g


def _check_grade(grade) -> int:
    if isinstance(grade, bool) or not isinstance(grade, (int, np.integer)):
        raise ValueError(f"grade must be an int 0..4, got {grade!r}")
    if not 0 <= int(grade) < len(GRADE_NAMES):
        raise ValueError(f"grade must be 0..{len(GRADE_NAMES) - 1}, got {grade}")
    return int(grade)


def _check(report: KneeReport):
    """Validated (image, clahe_image, cams, probabilities, grade, gate) of a report, the
    arrays as drawn (:func:`shrink`: copies no larger than PICTURE_SIDE)."""
    image = np.asarray(report.image)
    if image.ndim != 2 or image.size == 0:
        raise ValueError(f"{report.name}: image must be a non-empty grayscale (H, W) array, "
                         f"got shape {image.shape}")
    clahe = None
    if report.clahe_image is not None:
        clahe = np.asarray(report.clahe_image)
        if clahe.shape != image.shape:
            raise ValueError(f"{report.name}: clahe_image has shape {clahe.shape}, "
                             f"the image {image.shape}; they must match")
        clahe = shrink(clahe)[0]
    unknown = set(report.cams) - set(STREAMS)
    if unknown:
        raise ValueError(f"{report.name}: unknown Grad-CAM stream(s) {sorted(unknown)}; "
                         f"expected any of {list(STREAMS)}")
    cams = {}
    for stream in STREAMS:  # always raw before CLAHE, whatever the dict's order
        if stream not in report.cams:
            continue
        cam = np.asarray(report.cams[stream])
        if cam.shape != image.shape:
            raise ValueError(f"{report.name}: the {stream} Grad-CAM has shape {cam.shape} but "
                             f"the image has {image.shape}; resize the map to the image first")
        cam = shrink(cam.astype(np.float32, copy=False))[0]  # NaN stays NaN: area average
        if not np.isfinite(cam).all():
            raise ValueError(f"{report.name}: the {stream} Grad-CAM has NaN or inf values")
        cams[stream] = np.clip(cam, 0.0, 1.0)  # interpolation may overshoot [0, 1] slightly
    p = _check_probabilities(report.probabilities)
    return shrink(image)[0], clahe, cams, p, _check_grade(report.grade), _check_gate(report.gate)


# ------------------------------------------------------------------------------- picture

def _short(name: str, limit: int = _NAME_CHARS) -> str:
    if len(name) <= limit:
        return name
    keep = limit - 1
    return name[: keep - keep // 2] + "\u2026" + name[len(name) - keep // 2:]


def _percent(p: float) -> str:
    return "<1%" if 0 < p < 0.005 else f"{p:.0%}"


def _gray_kwargs(image: np.ndarray) -> dict:
    # uint8 is shown as stored (0 black, 255 white), not contrast-stretched
    return {"vmin": 0, "vmax": 255} if image.dtype == np.uint8 else {}


def _below(parent, gap: float, height: float):
    """Axes locator: a strip ``height`` inches high, ``gap`` inches under ``parent`` as drawn
    (after its equal aspect shrank it), exactly as wide as the image."""
    from matplotlib.transforms import Bbox

    def locate(ax, renderer):
        parent.apply_aspect()
        pos = parent.get_position(original=False)
        fig_h = parent.figure.get_figheight()
        return Bbox.from_bounds(pos.x0, pos.y0 - (gap + height) / fig_h, pos.width,
                                height / fig_h)
    return locate


def build_figure(report: KneeReport, dpi: int = 110):
    """The report's :class:`matplotlib.figure.Figure` (Agg canvas attached), not saved.

    Axes are labelled for lookup: ``"image"``, ``"cam_raw"``, ``"cam_clahe"``,
    ``"probabilities"`` and ``"colorbar_raw"`` / ``"colorbar_clahe"`` (``ax.get_label()``).
    The layout is fixed, in inches (no layout engine: half the drawing time).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    h, w = report.size or np.shape(report.image)[:2]
    image, clahe, cams, p, grade, gate = _check(report)

    bottom_lines = []
    if report.details:
        line = "   |   ".join(f"{k}: {v}" for k, v in report.details.items())
        bottom_lines += textwrap.wrap(line, 190) or [""]
    bottom_lines.append(CAPTION if cams else CAPTION_NO_CAM)

    fig_w, fig_h = FIGSIZE
    fig = Figure(figsize=FIGSIZE, dpi=dpi)
    FigureCanvasAgg(fig)

    def rect(x, y, width, height):  # inches -> figure fraction
        return [x / fig_w, y / fig_h, width / fig_w, height / fig_h]

    # bottom band: details and caption; images above it leave room for a colour scale
    # under each map and a two-line title; the bar chart to the right of the images
    band = 0.1 + 0.2 * len(bottom_lines)
    n_img = 1 + len(cams)
    gap, bar_left, bar_w, margin = 0.3, 1.05, 2.8, 0.15
    box_w = (fig_w - 2 * margin - 3 * gap - bar_left - bar_w) / 3
    x = (fig_w - n_img * (box_w + gap) - bar_left - bar_w) / 2  # centred
    box_y = band + 0.62
    box_h = fig_h - 0.62 - box_y

    ax = fig.add_axes(rect(x, box_y, box_w, box_h), label="image")
    ax.imshow(image, cmap="gray", **_gray_kwargs(image))
    ax.set_title(f"{_short(report.name)}\n{h} x {w} px", fontsize=10, parse_math=False)
    ax.set_axis_off()

    for stream, cam in cams.items():
        x += box_w + gap
        under = clahe if stream == "clahe" and clahe is not None else image
        _draw_cam(fig, rect(x, box_y, box_w, box_h), rect(x, box_y - 0.3, box_w, 0.12),
                  stream, cam, under, over_input=stream == "clahe" and clahe is None)

    x += box_w + gap + bar_left
    bar_y = band + (0.85 if gate is not None else 0.45)
    ax = fig.add_axes(rect(x, bar_y, bar_w, fig_h - 0.45 - bar_y), label="probabilities")
    _draw_probabilities(ax, p, grade, gate)
    if report.grade_set is not None:
        _draw_set(ax, report.grade_set, report.set_coverage)
    _draw_lines(fig, bottom_lines, margin / fig_w, fig_h)
    return fig


def _draw_cam(fig, box, bar_box, stream: str, cam: np.ndarray, under: np.ndarray,
              over_input: bool) -> None:
    """One stream's Grad-CAM over its view, with the colour scale under it."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    jet = colormaps["jet"]
    ax = fig.add_axes(box, label=f"cam_{stream}")
    ax.imshow(under, cmap="gray", **_gray_kwargs(under))
    ax.imshow(cam, cmap=jet, alpha=CAM_ALPHA, vmin=0.0, vmax=1.0)
    title = STREAM_TITLES[stream]
    if over_input:
        title += "\n(drawn over the input image)"
    ax.set_title(title, fontsize=10)
    ax.set_axis_off()
    # the scale at full opacity (easier to read than the see-through overlay), under
    # the image and exactly as wide as it
    cax = fig.add_axes(bar_box, label=f"colorbar_{stream}")
    cax.set_axes_locator(_below(ax, 0.08, 0.12))
    bar = fig.colorbar(ScalarMappable(norm=Normalize(0.0, 1.0), cmap=jet), cax=cax,
                       orientation="horizontal", ticks=[0, 0.25, 0.5, 0.75, 1])
    bar.set_label(CAM_LABEL, fontsize=8, labelpad=2)
    bar.ax.tick_params(labelsize=7, length=2, pad=1)


def _draw_probabilities(ax, p: list[float], grade: int, gate) -> None:
    """The five probabilities as bars, the predicted grade in colour, the gate under them."""
    ys = np.arange(len(GRADE_NAMES))
    colors = [PREDICTED_COLOR if k == grade else OTHER_COLOR for k in ys]
    ax.barh(ys, p, color=colors, height=0.7)
    ax.set_yticks(ys, GRADE_NAMES, fontsize=9)
    ax.get_yticklabels()[grade].set_fontweight("bold")
    ax.invert_yaxis()  # KL0 on top, KL4 at the bottom
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("probability", fontsize=9, labelpad=2)
    ax.tick_params(axis="x", labelsize=8)
    for k, v in enumerate(p):
        inside = v > 0.85  # no room right of the bar: write inside it
        ax.text(v - 0.01 if inside else v + 0.01, k, _percent(v), va="center",
                ha="right" if inside else "left", fontsize=8,
                color="white" if inside else "black",
                fontweight="bold" if k == grade else "normal")
    ax.set_title(f"Predicted: {GRADE_NAMES[grade]} ({p[grade]:.0%})", fontsize=11,
                 fontweight="bold", color=PREDICTED_COLOR, pad=14)
    ax.spines[["top", "right"]].set_visible(False)
    if gate is not None:
        ax.annotate(f"Stream weights: raw {gate[0]:.2f}, CLAHE {gate[1]:.2f}",
                    xy=(0.5, 0.0), xycoords=ax.xaxis.label, xytext=(0, -5),
                    textcoords="offset points", ha="center", va="top", fontsize=9.5)
        ax.annotate("(how much each view counted; they add up to 1)",
                    xy=(0.5, 0.0), xycoords=ax.xaxis.label, xytext=(0, -19),
                    textcoords="offset points", ha="center", va="top", fontsize=7.5,
                    color="dimgray")


def set_words(grade_set: Sequence[int], coverage: float) -> str:
    """``set KL1–KL3 at 90 %``: the conformal set as ``koa predict`` prints it."""
    return f"set {grades_label(grade_set)} at {100 * coverage:g} %"


def _draw_set(ax, grade_set: Sequence[int], coverage: float) -> None:
    """The set of grades: its bars outlined, and in words under the title."""
    for k in grade_set:
        ax.barh(k, 1.0, height=0.86, fill=False, edgecolor=SET_COLOR, linewidth=1.4)
    words = set_words(grade_set, coverage)
    ax.text(0.5, 1.0, f"{words[0].upper()}{words[1:]} (outlined)",
            transform=ax.transAxes, ha="center", va="bottom", fontsize=8.5, color=SET_COLOR)


def _draw_lines(fig, lines: list[str], left: float, fig_h: float) -> None:
    """The details (left) and the caption (centred, last) along the bottom."""
    for i, line in enumerate(reversed(lines)):
        caption = i == 0
        fig.text(0.5 if caption else left, (0.1 + 0.2 * i) / fig_h, line,
                 ha="center" if caption else "left", va="bottom",
                 fontsize=8.5 if caption else 7.5, color="black" if caption else "dimgray",
                 style="italic" if caption else "normal", parse_math=False)


def render_report(report: KneeReport, path: str | Path, dpi: int = 110) -> Path:
    """Write the report's picture as a PNG of about 14 x 4.2 inches times ``dpi`` pixels.

    Creates the parent folder if needed; writes nothing but ``path``. A character the font
    lacks (a CJK file name) is drawn as a box, without matplotlib's warning per glyph.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"(?s).*[Gg]lyph.*missing from",
                                category=UserWarning)
        fig = build_figure(report, dpi=dpi)
        fig.savefig(path, dpi=dpi, format="png")
    return path


# ---------------------------------------------------------------------------------- HTML

LEGEND = (
    "<b>Grade:</b> the Kellgren-Lawrence (KL) scale says how far knee osteoarthritis has "
    "progressed on an X-ray, from KL0 (healthy) through KL1 (doubtful), KL2 (minimal) and "
    "KL3 (moderate) to KL4 (severe). "
    "<b>Probabilities:</b> how confident the model is in each of the five grades; they add "
    "up to 100%, and the grade shown is the model's answer. "
    "<b>Grad-CAM:</b> in each picture the coloured map shows which parts of the X-ray pushed "
    "the model towards its answer, red where they mattered most and blue where they hardly "
    "mattered. "
    "<b>Stream weights:</b> the model looks at each knee twice, as the plain X-ray "
    "(&ldquo;raw&rdquo;) and with its contrast enhanced (&ldquo;CLAHE&rdquo;), and these two "
    "numbers, adding up to 1, say how much each view counted in the decision. "
    "The model is a research tool, not a diagnosis."
)

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
       margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; margin-bottom: 0.3em; }
p.legend { max-width: 60em; line-height: 1.45; background: #f4f6f8; padding: 0.7em 1em;
           border-left: 4px solid #a6b4c4; }
table { border-collapse: collapse; }
th, td { border-bottom: 1px solid #ddd; padding: 0.45em 0.7em; text-align: left;
         vertical-align: top; }
th { background: #eef1f4; }
td.name { font-family: ui-monospace, Menlo, Consolas, monospace; word-break: break-all;
          max-width: 18em; }
td.grade { font-weight: bold; white-space: nowrap; }
.set { color: #1f77b4; font-weight: normal; }
.error { color: #c00000; white-space: pre-wrap; }
table.probs td { border: none; padding: 0 0.3em; font-size: 0.85em; white-space: nowrap; }
.bar { display: inline-block; height: 0.7em; background: #a6b4c4; }
tr.pred .bar { background: #d62728; }
tr.pred td { font-weight: bold; }
.muted { color: #777; }
img { border: 1px solid #ccc; }
"""


def index_entry(report: KneeReport, picture: str | None, error: str | None = None) -> dict:
    """The :func:`write_html_index` entry of a report whose picture is ``picture``."""
    return {"name": report.name, "picture": picture, "grade": int(report.grade),
            "probabilities": [float(v) for v in report.probabilities],
            "gate": None if report.gate is None else [float(v) for v in report.gate],
            "set": (None if report.grade_set is None
                    else set_words(report.grade_set, report.set_coverage)),
            "error": error}


def _probability_table(p: list[float], grade: int) -> str:
    rows = []
    for k, (label, v) in enumerate(zip(GRADE_NAMES, p)):
        cls = ' class="pred"' if k == grade else ""
        rows.append(f'<tr{cls}><td>{html.escape(label)}</td>'
                    f'<td><span class="bar" style="width:{100 * v:.1f}px"></span></td>'
                    f"<td>{html.escape(_percent(v))}</td></tr>")
    return '<table class="probs">' + "".join(rows) + "</table>"


def _row(entry: Mapping) -> str:
    name = html.escape(str(entry.get("name", "")))
    error = entry.get("error")
    error_html = f'<span class="error">{html.escape(str(error))}</span>' if error else ""
    grade = entry.get("grade")
    if grade is None:
        text = error_html or '<span class="error">no result</span>'
        return f'<tr class="failed"><td class="name">{name}</td><td colspan="4">{text}</td></tr>'
    grade = _check_grade(grade)
    probs = entry.get("probabilities")
    p = None if probs is None else _check_probabilities(probs, f"{entry.get('name')}: "
                                                               "probabilities")
    grade_cell = html.escape(GRADE_NAMES[grade])
    if p is not None:
        grade_cell += f' <span class="muted">({html.escape(f"{p[grade]:.0%}")})</span>'
    if entry.get("set"):  # the conformal set, as koa predict prints it
        grade_cell += f'<br><span class="set">{html.escape(str(entry["set"]))}</span>'
    flags = entry.get("flags")
    if flags:  # koa_core.data.inputcheck: graded, but unlike the training knees
        grade_cell += ('<br><span class="error">input check: '
                       + html.escape(", ".join(str(f) for f in flags)) + "</span>")
    prob_cell = _probability_table(p, grade) if p is not None else '<span class="muted">-</span>'
    gate = _check_gate(entry.get("gate"))
    gate_cell = (html.escape(f"raw {gate[0]:.2f}, CLAHE {gate[1]:.2f}") if gate is not None
                 else '<span class="muted">single stream</span>')
    picture = entry.get("picture")
    if picture:
        # percent-encode so '#', '?' or ':' in a file name cannot make it a fragment or an
        # external address; then escape for the attribute
        src = html.escape(quote(str(picture)), quote=True)
        pic_cell = (f'<a href="{src}"><img src="{src}" width="320" '
                    f'alt="explanation picture of {name}"></a>')
    else:
        pic_cell = '<span class="muted">no picture</span>'
    if error_html:
        pic_cell += f"<br>{error_html}"
    return (f'<tr class="ok"><td class="name">{name}</td><td class="grade">{grade_cell}</td>'
            f"<td>{prob_cell}</td><td>{gate_cell}</td><td>{pic_cell}</td></tr>")


def write_html_index(entries: Sequence[Mapping], out_dir: str | Path,
                     title: str = "Knee X-ray KL grading report") -> Path:
    """Write ``out_dir/index.html``: one table row per entry, a legend, nothing external.

    Each entry is a dict with ``name``, ``picture`` (the PNG's file name relative to
    ``out_dir``, or None), ``grade`` (int, or None for a failed file), ``probabilities``
    (5 values or None), ``gate`` ((w_raw, w_clahe) or None), ``flags`` (the input check's
    flags, :mod:`koa_core.data.inputcheck`) and ``error`` (str or None);
    missing keys count as None. Raises ValueError on a malformed grade, probabilities or
    gate, before anything is written.
    """
    rows = [_row(e) for e in entries]  # validates everything first
    n_failed = sum(e.get("grade") is None for e in entries)
    summary = (f"{len(rows)} file{'s' if len(rows) != 1 else ''}: "
               f"{len(rows) - n_failed} graded, {n_failed} failed.")
    t = html.escape(title)
    page = "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{t}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        f"<h1>{t}</h1>",
        f"<p>{html.escape(summary)} Click a picture to see it at full size.</p>",
        f'<p class="legend">{LEGEND}</p>',
        "<table>",
        "<thead><tr><th>File</th><th>Grade (probability)</th><th>Probabilities</th>"
        "<th>Stream weights</th><th>Picture</th></tr></thead>",
        "<tbody>",
        *rows,
        "</tbody>",
        "</table>",
        "</body>",
        "</html>",
        "",
    ])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "index.html"
    path.write_text(page, encoding="utf-8", newline="\n")
    return path
