"""Grading the files people have: folders, batches, CSV, Grad-CAM and reports (paper §3.1).

``koa predict DIR_OR_FILES...`` runs here:

* **inputs** (:func:`collect_inputs`): files named on the command line are always tried;
  folders are walked in sorted order (hidden entries skipped, symlinked subfolders followed
  once) for PNG, JPEG, WebP, TIFF and DICOM files - DICOM also without a suffix,
  recognised by its ``DICM`` preamble. Other files in a folder are skipped and counted.
* **batches**: files are decoded and preprocessed by a small thread pool a batch ahead of
  the network, graded a batch at a time, and forgotten: memory stays flat however many
  files there are. A file that cannot be read, or whose prediction fails, gets its error
  in its row and the batch goes on.
* **rows** (:data:`CSV_FIELDS`): grade, the five probabilities, the gate, the precision
  and engine that ran the network, the temperature applied (``koa calibrate``), the
  image's size, DICOM photometry and pixel spacing, and the error. ``--out`` receives
  each row as soon as it is graded and is flushed, so an interrupted batch leaves a valid
  CSV of the files graded so far.
* **explanations**: ``--cam DIR`` writes each stream's Grad-CAM over the input image, at its
  own resolution up to :data:`~koa_core.infer.knee_report.PICTURE_SIDE` pixels on the long
  side (a larger one is drawn from an area-averaged copy, so the pictures cost what the
  views do, whatever the input's size; the map is computed on the model's input, the crop
  of :func:`~koa_core.data.preprocess.crop_box`, and drawn back where that crop came from);
  ``--report DIR`` writes one picture per knee (:mod:`koa_core.infer.knee_report`) and an
  ``index.html`` for the batch.

Nothing is ever written beside the inputs: outputs go only where the options say, and
they never clobber. :func:`check_outputs` refuses, in one line and before anything is
written, an output that is the same file as an input or the checkpoint (device and inode:
a hard link too), a CSV inside the ``--cam`` or ``--report`` folder, an output inside a
walked input folder (a later run would grade it) and an output that is not a regular file
(a FIFO would block for ever). One run at a time writes a CSV or a picture folder: the
file, or the folder, is itself locked (:class:`~koa_core.locking.FileLock`). Pictures and
the report index are drawn in a private hidden folder inside theirs and renamed into
place, so nothing in their way (a FIFO, a hard link to an input) is opened. CAM and report
files are named after the input's stem, with a short digest of its path when two inputs
share a stem or the stem is long, so that no two knees share a picture. A folder reached
again through a symlink (a loop, a second name) is skipped and counted. Names are
shown as UTF-8 can hold them (a byte that is not UTF-8 as ``\\xff``, :func:`plain_text`);
printed names escape control characters, and CSV cells that a spreadsheet would run as a
formula (``= + - @``, tab, carriage return first) start with a single quote. JSON holds no
NaN or infinity (null instead).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from koa_core import GRADE_NAMES
from koa_core.data.dicom import is_dicom
from koa_core.data.imaging import is_image_file, read_image
from koa_core.data.inputcheck import describe, summarize_flags
from koa_core.data.preprocess import Preprocessor, apply_clahe, crop_box
from koa_core.errors import KoaError, printable
from koa_core.files import check_output_file, check_writable, file_id, refuse_same_file
from koa_core.infer.backends import load_backend
from koa_core.infer.explain import cam_picture, grad_cam, stream_layers
from koa_core.infer.knee_report import (
    KneeReport,
    render_report,
    set_words,
    shrink,
    write_html_index,
)
from koa_core.infer.profile import check_for
from koa_core.locking import FileLock
from koa_core.metrics.conformal import grades_label
from koa_core.model.checkpoint import resolve_checkpoint, sidecar_path

__all__ = ["CSV_FIELDS", "BatchOptions", "BatchResult", "Prediction", "check_outputs",
           "collect_inputs", "csv_cell", "grade_batch", "iter_predictions", "plain_text",
           "predict_files", "write_predictions"]

CSV_FIELDS = ["path", "grade", "p0", "p1", "p2", "p3", "p4", "set", "set_coverage",
              "gate_raw", "gate_clahe",
              "precision", "engine", "temperature", "width", "height", "photometric",
              "pixel_spacing_mm", "input_check", "error"]


@dataclass
class Prediction:
    path: str
    grade: int | None = None
    probabilities: list[float] | None = None
    gate: list[float] | None = None
    cams: list[str] | None = None
    report: str | None = None
    precision: str | None = None  # "fp32", "bf16 autocast", "onnxruntime int8": what ran
    engine: str | None = None
    temperature: float | None = None  # fitted by koa calibrate and applied (None: softmax)
    grade_set: list[int] | None = None  # the conformal set (koa calibrate): its grades
    set_coverage: float | None = None  # ... and the share of knees it is calibrated to hold
    size: list[int] | None = None  # [height, width] of the input image
    dicom: dict | None = None  # photometric interpretation, pixel spacing, window...
    input_flags: list[str] | None = None  # koa_core.data.inputcheck: [] when the image passed
    error: str | None = None

    def to_dict(self) -> dict:
        """The fields that are set, as JSON holds them: names in UTF-8 (:func:`plain_text`),
        a number that is not finite (a DICOM's NaN pixel spacing) as None."""
        return {k: _plain(v) for k, v in self.__dict__.items() if v is not None}

    def line(self) -> str:
        """The printed line: control characters in the name or error are escaped, so a
        name holding a newline cannot forge a second result line."""
        path = printable(plain_text(self.path))
        if self.error:
            return f"{path}: error: {printable(plain_text(self.error))}"
        probs = " ".join(f"{p:.3f}" for p in self.probabilities)
        flags = f"  [input check: {', '.join(self.input_flags)}]" if self.input_flags else ""
        return f"{path}: KL{self.grade} ({GRADE_NAMES[self.grade].split(' ', 1)[1]}, " \
               f"{self.probabilities[self.grade]:.2f})  p[KL0..KL4] = {probs}" \
               f"{self.set_words()}{flags}"

    def set_words(self) -> str:
        """``  set KL1–KL3 at 90 %``, or nothing without a calibration."""
        if self.grade_set is None:
            return ""
        return "  " + set_words(self.grade_set, self.set_coverage)

    def set_label(self) -> str | None:
        """``KL1–KL3``, the CSV's ``set``; None without a calibration."""
        return None if self.grade_set is None else grades_label(self.grade_set)

    def row(self) -> dict:
        p = self.probabilities or [None] * 5
        g = self.gate or [None, None]
        d = self.dicom or {}
        spacing = d.get("pixel_spacing_mm")
        return {"path": csv_cell(plain_text(self.path)), "grade": self.grade,
                **{f"p{k}": _fmt(p[k]) for k in range(5)},
                "set": self.set_label(), "set_coverage": _fmt(self.set_coverage),
                "gate_raw": _fmt(g[0]), "gate_clahe": _fmt(g[1]),
                "precision": self.precision, "engine": self.engine,
                "temperature": _fmt(self.temperature),
                "width": self.size[1] if self.size else None,
                "height": self.size[0] if self.size else None,
                "photometric": csv_cell(plain_text(d.get("photometric"))),
                "pixel_spacing_mm": " ".join(f"{v:g}" for v in spacing) if spacing else None,
                "input_check": ("; ".join(self.input_flags) or "ok"
                                if self.input_flags is not None else None),
                "error": csv_cell(plain_text(self.error))}


def plain_text(text: str | None) -> str | None:
    """``text`` as UTF-8 can hold it: the bytes of a file name that are not UTF-8 (kept by
    ``os.fsdecode`` as lone surrogates) written as ``\\xff``; any other text unchanged."""
    if text is None:
        return None
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that no file name's byte gives
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def _plain(value):
    """``value`` for JSON: strings through :func:`plain_text`, non-finite numbers None."""
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        return plain_text(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {plain_text(str(k)): _plain(v) for k, v in value.items()}
    return value


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(text: str | None) -> str | None:
    """A text cell as spreadsheets will not run it (OWASP's CSV-injection rule): a cell
    starting with ``= + - @``, tab or carriage return gets a leading single quote."""
    if text and text.startswith(_FORMULA_START):
        return "'" + text
    return text


def _fmt(v: float | None) -> str | None:
    return None if v is None else f"{v:.6f}"


# ------------------------------------------------------------------ inputs
@dataclass
class Inputs:
    files: list[str] = field(default_factory=list)
    skipped: int = 0  # files in walked folders that are not images
    followed: int = 0  # symlinked subfolders walked
    repeated: int = 0  # folders reached again through a link (a loop, a second name): skipped
    walked: dict[str, str] = field(default_factory=dict)  # real path -> the folder named


def _looks_like_image(path: Path) -> bool:
    if is_image_file(path):
        return True
    return is_dicom(path)  # stats first: a FIFO or a device is never opened


def _real(path: str | Path) -> str:
    return os.path.realpath(os.path.abspath(path))


def collect_inputs(paths: list[str]) -> Inputs:
    """Files to grade: named files as given, folders walked (sorted, hidden entries
    skipped, symlinked subfolders followed once). An empty name is refused (it is not the
    current folder)."""
    found = Inputs()
    for arg in paths:
        if not str(arg).strip():
            raise KoaError("an empty file name was given (use . for the current folder)")
        if Path(arg).is_dir():
            _walk(Path(arg), found)
        else:
            found.files.append(arg)
    return found


def _walk(root: Path, found: Inputs) -> None:
    """Walk ``root`` into ``found``: each folder once, by (device, inode), however many
    links lead to it; a link back up (a loop) or to a folder already walked is counted."""
    visited = {file_id(root)}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        here = Path(dirpath)
        found.walked[_real(here)] = str(root)
        kept = []
        for d in sorted(dirnames):
            fid = None if d.startswith(".") else file_id(here / d)
            if fid is None:
                continue
            if fid in visited:
                found.repeated += 1
                continue
            visited.add(fid)
            found.followed += os.path.islink(here / d)
            kept.append(d)
        dirnames[:] = kept
        for name in sorted(filenames):
            f = here / name
            if name.startswith("."):
                continue
            if _looks_like_image(f):
                found.files.append(str(f))
            else:
                found.skipped += 1


def _inside(path: str | Path, folders: dict[str, str]) -> str | None:
    """The entry of ``folders`` (real paths) that holds ``path`` or is it, if any."""
    real = Path(_real(path))
    for p in (real, *real.parents):
        if str(p) in folders:
            return folders[str(p)]
    return None


def check_outputs(inputs: Inputs, out: str | Path | None, cam_dir: str | Path | None = None,
                  report_dir: str | Path | None = None, sources: list = ()) -> None:
    """Refuse, in one line and before anything is written, outputs that would clobber:
    the same file as an input or one of ``sources`` (the checkpoint and its sidecar), not
    a regular file (a FIFO, a device, a folder), a CSV inside the CAM or report folder (or
    the report's own index), or any output inside a walked input folder."""
    folders = {"--cam": cam_dir, "--report": report_dir}
    index = Path(report_dir) / "index.html" if report_dir else None
    refuse_same_file({"--out": out, **folders, "the report's index": index},
                     [*inputs.files, *sources])
    if out:
        check_output_file(out, "the CSV")
    for what, folder in folders.items():
        if folder and os.path.exists(folder) and not os.path.isdir(folder):
            raise KoaError(f"{folder}: {what} names a file, not a folder")
    if index is not None:
        check_output_file(index, "the report's index")
    for what, folder in folders.items():
        if out and folder and _inside(out, {_real(folder): str(folder)}):
            raise KoaError(f"{out}: --out lies inside the {what} folder {folder}; refused "
                           "(the CSV would be overwritten)")
    for what, path in [("--out", out), *folders.items()]:
        root = _inside(path, inputs.walked) if path else None
        if root is not None:
            raise KoaError(f"{path}: {what} lies inside the input folder {root}; refused "
                           "(nothing is written among the inputs: a later run would grade it)")


# ------------------------------------------------------------------ grading
@dataclass
class _Loaded:
    path: str
    image: np.ndarray | None = None  # as the model's training images were: input transform on
    views: np.ndarray | None = None
    box: tuple[int, int, int, int] | None = None
    meta: dict | None = None
    flags: list[str] | None = None
    error: str | None = None


def _load(path: str, pre: Preprocessor, check=None) -> _Loaded:
    try:
        image, meta = read_image(path)
        flags = check.flags(image) if check is not None else None  # the file as read
        image = pre.transform_input(image)  # the checkpoint's input transform, if any
        raw, clahe = pre.paper_views(image)
    except KoaError as exc:
        msg = str(exc)
        return _Loaded(path, error=msg[len(path) + 2:] if msg.startswith(f"{path}: ") else msg)
    h, w = image.shape
    box = crop_box(image) if pre.crop else (0, 0, h, w)
    return _Loaded(path, image, np.stack([raw, clahe]), box, meta, flags)


_STEM_MAX = 60  # characters of the input's stem kept in an output file name


def _digest(path: str) -> str:
    return hashlib.sha1(_real(path).encode("utf-8", "surrogateescape")).hexdigest()[:8]


def _out_stems(files: list[str]) -> list[str]:
    """A distinct, filesystem-safe, short name per input for its CAM and report files: the
    input's stem, plus ``-`` and 8 hex digits of its path's SHA-1 when another input has
    the same stem (``x/a.png`` and ``y/a.png``, in any case) or the stem was shortened."""
    bases = []
    for f in files:
        full = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(f).stem).strip("._") or "image"
        bases.append((full[:_STEM_MAX], len(full) > _STEM_MAX))
    count: dict[str, int] = {}
    for base, _ in bases:
        count[base.casefold()] = count.get(base.casefold(), 0) + 1
    stems, taken = [], set()
    for f, (base, cut) in zip(files, bases):
        if cut or count[base.casefold()] > 1:
            base = f"{base}-{_digest(f)}"
        stem, n = base, 1
        while stem.casefold() in taken:  # the same file named twice, or a digest's twin
            n += 1
            stem = f"{base}-{n}"
        taken.add(stem.casefold())
        stems.append(stem)
    return stems


def cam_on_input(cam_map: np.ndarray, shape: tuple[int, int],
                 box: tuple[int, int, int, int]) -> np.ndarray:
    """A Grad-CAM map of the model's input drawn back at the input image's resolution:
    resized to the crop it was computed on and placed there; zero outside the crop."""
    top, left, h, w = box
    full = np.zeros(shape, np.float32)
    full[top:top + h, left:left + w] = cv2.resize(cam_map.astype(np.float32), (w, h),
                                                  interpolation=cv2.INTER_LINEAR)
    return np.clip(full, 0.0, 1.0)


@dataclass
class _OutFolder:
    """An output folder (``--cam``, ``--report``) and the private folder inside it where
    each file is drawn under its final name before it is renamed into place: whatever is
    in the way (a FIFO, a hard link to another file) is replaced, never opened."""

    path: Path
    drawing: Path

    def place(self, drawn: str | Path) -> Path:
        final = self.path / Path(drawn).name
        os.replace(drawn, final)
        return final


@contextlib.contextmanager
def _drawing_folder(folder: Path) -> Iterator[Path]:
    """A private hidden folder inside ``folder``, removed with what is left in it."""
    tmp = Path(tempfile.mkdtemp(prefix=".koa-drawing-", dir=folder))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _explain(backend, item: _Loaded, pred: Prediction, pre: Preprocessor, stem: str,
             cam_dir: _OutFolder | None, report_dir: _OutFolder | None) -> None:
    model = backend.cam_model
    # drawn from a copy at most PICTURE_SIDE pixels on its long side: the pictures cost
    # what the views do, not what the input does (full-size float copies cost gigabytes)
    image, box = shrink(item.image, item.box)
    clahe = apply_clahe(image, pre.clahe_clip, pre.clahe_tiles)
    cams = {s: cam_on_input(grad_cam(model, item.views, pred.grade, s), image.shape, box)
            for s in stream_layers(model)}
    if cam_dir is not None:
        pred.cams = []
        for stream, cam_map in cams.items():
            path = cam_dir.drawing / f"{stem}_{stream}_cam.png"
            pic = cam_picture(image if stream == "raw" else clahe, cam_map, box)
            if not cv2.imwrite(str(path), cv2.cvtColor(pic, cv2.COLOR_RGB2BGR)):
                raise OSError(f"could not write {path}")
            pred.cams.append(str(cam_dir.place(path)))
    if report_dir is not None:
        report = KneeReport(name=printable(plain_text(Path(item.path).name)), image=image,
                            probabilities=pred.probabilities, grade=pred.grade,
                            gate=pred.gate, cams=cams, clahe_image=clahe,
                            details=_details(item, pred, pre), size=item.image.shape,
                            grade_set=pred.grade_set, set_coverage=pred.set_coverage)
        drawn = render_report(report, report_dir.drawing / f"{stem}_report.png")
        pred.report = str(report_dir.place(drawn))


def _details(item: _Loaded, pred: Prediction, pre: Preprocessor) -> dict[str, str]:
    """The report picture's small print: what ran, the input transform and check, the
    temperature, DICOM facts."""
    details = {"precision": pred.precision, "engine": pred.engine}
    if pre.input_clahe_clip is not None:
        details["input transform"] = f"{pre.describe_input()} (as trained)"
    if item.flags:
        details["INPUT CHECK"] = describe(item.flags)
    if pred.temperature is not None:
        details["temperature"] = f"{pred.temperature:.3f} (koa calibrate)"
    meta = item.meta or {}
    if meta.get("pixel_spacing_mm"):
        details["pixel spacing"] = " x ".join(f"{v:g}" for v in meta["pixel_spacing_mm"]) + " mm"
    if meta.get("photometric"):
        details["DICOM"] = meta["photometric"]
    return details


def _make_dir(path: str | Path | None, what: str) -> Path | None:
    if path is None:
        return None
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KoaError(f"{path}: cannot create the {what} folder ({exc.strerror})") from None
    check_writable(path, what)
    return path


def iter_predictions(files: list[str], backend, cam_dir: str | Path | None = None,
                     report_dir: str | Path | None = None, batch_size: int = 16,
                     workers: int = 2) -> Iterator[Prediction]:
    """Grade ``files`` with ``backend`` (:mod:`koa_core.infer.backends`), one Prediction per file
    in order; a batch is decoded by ``workers`` threads while the previous one is graded."""
    pre = Preprocessor.from_sidecar(backend.sidecar)
    check = check_for(backend.sidecar)
    cam_dir = _make_dir(cam_dir, "Grad-CAM")
    report_dir = _make_dir(report_dir, "report")
    if (cam_dir or report_dir) and getattr(backend, "cam_model", None) is None:
        raise KoaError("Grad-CAM (--cam, --report) needs the .safetensors checkpoint; an ONNX "
                       "file has no gradients")
    # checked above, before the caller writes anything; the batches run lazily below
    return _predictions(files, backend, (pre, check), cam_dir, report_dir, batch_size, workers)


def _predictions(files, backend, prepare, cam_dir, report_dir, batch_size, workers):
    with contextlib.ExitStack() as stack:
        dirs = tuple(None if d is None else _OutFolder(d, stack.enter_context(_drawing_folder(d)))
                     for d in (cam_dir, report_dir))
        yield from _graded(files, backend, prepare, dirs, batch_size, workers)


def _graded(files, backend, prepare, dirs, batch_size, workers):
    pre, check = prepare
    conf = backend.conformal
    stems = _out_stems(files)
    batches = [list(range(i, min(i + batch_size, len(files))))
               for i in range(0, len(files), batch_size)]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        def submit(b):
            return [pool.submit(_load, files[i], pre, check) for i in b]

        pending = submit(batches[0]) if batches else []
        for k, batch in enumerate(batches):
            loaded = [f.result() for f in pending]
            pending = submit(batches[k + 1]) if k + 1 < len(batches) else []
            good = [it for it in loaded if it.error is None]
            probs = gates = None
            if good:
                probs, gates = backend.predict(np.stack([it.views for it in good]),
                                               batch_size=len(good))
            j = 0
            for i, item in zip(batch, loaded):
                if item.error is None and not np.isfinite(probs[j]).all():
                    item.error = "the network gave probabilities that are not finite (NaN)"
                    j += 1
                if item.error is not None:
                    yield Prediction(item.path, error=item.error)
                    continue
                pred = Prediction(item.path, int(probs[j].argmax()),
                                  [float(p) for p in probs[j]],
                                  [float(g) for g in gates[j]] if gates is not None else None,
                                  precision=backend.precision, engine=backend.engine,
                                  temperature=backend.temperature, size=list(item.image.shape),
                                  dicom=item.meta or None, input_flags=item.flags)
                if conf is not None:
                    pred.grade_set = np.flatnonzero(conf.sets(probs[j][None])[0]).tolist()
                    pred.set_coverage = conf.coverage
                j += 1
                if any(dirs):
                    _explain_one(backend, item, pred, pre, stems[i], dirs)
                yield pred


def _explain_one(backend, item, pred, pre, stem, dirs) -> None:
    """Write one file's CAMs and report picture; a picture that cannot be written (a full
    disk, a name the file system refuses) is that file's error, and the batch goes on."""
    try:
        _explain(backend, item, pred, pre, stem, *dirs)
    except (OSError, KoaError, cv2.error) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        pred.error = (f"graded KL{pred.grade}, but its pictures could not be written "
                      f"({printable(why.splitlines()[0] if why else type(exc).__name__)})")


def write_predictions(preds: Iterator[Prediction], out: str | Path, total: int | None = None,
                      progress: bool = False, echo=None) -> dict:
    """Stream predictions into the CSV ``out``, a flushed row per file; counts by outcome.
    The file is locked while it is written (:class:`~koa_core.locking.FileLock`): a second
    writer is refused in one line and the first one's rows are left alone."""
    out = Path(out)
    check_writable(out)
    check_output_file(out, "the CSV")
    with FileLock(out, "writing it") as lock:
        return _write_rows(preds, out, lock.fd, total, progress, echo)


def _write_rows(preds, out: Path, fd: int, total, progress, echo) -> dict:
    from tqdm.auto import tqdm

    counts = {"graded": 0, "failed": 0}
    try:
        os.ftruncate(fd, 0)  # the locked file: emptied only now that it is ours
        with os.fdopen(os.dup(fd), "w", newline="", encoding="utf-8") as fh, \
                tqdm(total=total, unit="img", disable=not progress, desc="grading",
                     leave=False) as bar:
            fh.seek(0)
            w = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
            w.writeheader()
            fh.flush()
            for pred in preds:
                w.writerow(pred.row())
                fh.flush()
                counts["failed" if pred.error else "graded"] += 1
                bar.update(1)
                if echo is not None:
                    echo(pred)
    except OSError as exc:  # a full disk, a vanished folder: name the CSV
        if exc.filename and Path(exc.filename) != out:
            raise
        raise KoaError(f"{out}: cannot write the CSV ({exc.strerror or exc})") from None
    return counts


@dataclass
class BatchOptions:
    """How a batch is graded: ``koa predict``'s options (its defaults, but the engine)."""

    checkpoint: str | Path | None = None  # None: the shipped checkpoint
    engine: str = "torch"
    device: str | None = None
    calibrated: bool = True  # apply the temperature koa calibrate fitted, if any
    cam_dir: str | Path | None = None
    report_dir: str | Path | None = None
    out: str | Path | None = None  # the CSV, a flushed row per file
    batch_size: int = 16
    keep: bool = False  # keep every Prediction in the result (JSON, report index)
    progress: bool = False  # a progress bar while the CSV is written


@dataclass
class BatchResult:
    """What a batch came to: counts, the input check's flags and the kept predictions."""

    files: int
    skipped: int  # files in walked folders that are not images
    failed: int = 0
    followed: int = 0  # symlinked subfolders walked
    repeated: int = 0  # folders reached again through a link, skipped
    set_coverage: float | None = None  # the checkpoint's conformal sets (None: no sets)
    no_sets: str | None = None  # why there are no sets, said once
    set_sizes: list[int] = field(default_factory=list)
    flags: list[list[str]] = field(default_factory=list)
    kept: list[Prediction] = field(default_factory=list)

    def summary(self, out: str | Path | None = None) -> str:
        """The batch's closing line: 'graded 9 of 10 file(s), 1 failed; ...'."""
        flagged = summarize_flags(self.flags)
        return (f"graded {self.files - self.failed} of {self.files} file(s), {self.failed} failed"
                + (f"; {self.sets_words()}" if self.set_sizes or self.no_sets else "")
                + (f"; {flagged}" if flagged else "")
                + (f"; skipped {self.skipped} file(s) that are not images" if self.skipped
                   else "")
                + (f"; followed {self.followed} symlinked folder(s)" if self.followed else "")
                + (f"; skipped {self.repeated} folder(s) already walked (reached again "
                   "through a link)" if self.repeated else "")
                + (f"; rows in {printable(plain_text(str(out)))}" if out else ""))


    def sets_words(self) -> str:
        """How many knees got a set of one, two, three or more grades, or why none did."""
        if self.no_sets:
            return f"no sets of grades ({self.no_sets})"
        s = np.array(self.set_sizes)
        return (f"sets at {100 * self.set_coverage:g} %: {(s == 1).sum()} of one grade, "
                f"{(s == 2).sum()} of two, {(s >= 3).sum()} of three or more")


@contextlib.contextmanager
def _writers(opts: BatchOptions) -> Iterator[None]:
    """Hold the batch's outputs for as long as it writes them: the CSV locked (created if
    missing; removed again if the batch fails before its header), the CAM and report
    folders created and locked. A second run on any of them is refused in one line."""
    with contextlib.ExitStack() as stack:
        if opts.out:
            check_writable(opts.out)
            stack.enter_context(FileLock(opts.out, "writing it"))
        for folder, what in ((opts.cam_dir, "Grad-CAM"), (opts.report_dir, "report")):
            if folder:
                _make_dir(folder, what)
                stack.enter_context(FileLock(folder, f"writing {what} pictures there"))
        yield


def grade_batch(paths: list[str], opts: BatchOptions | None = None,
                echo: Callable[[Prediction], None] | None = None) -> BatchResult:
    """Grade files and folders (the one front door of ``koa predict`` and
    :func:`predict_files`): each file's Prediction goes to ``echo`` as soon as it is graded
    and, with ``opts.out``, into the CSV; a bad file gets an error entry and the rest go on.
    Outputs that would clobber are refused first (:func:`check_outputs`). An interrupt
    (KeyboardInterrupt) leaves the rows written so far and propagates."""
    opts = opts or BatchOptions()
    inputs = collect_inputs(paths)
    if not inputs.files:
        raise KoaError(f"no image files found in {', '.join(map(str, paths))} (PNG, JPEG, "
                       "WebP, TIFF or DICOM)")
    checkpoint = resolve_checkpoint(opts.checkpoint)
    check_outputs(inputs, opts.out, opts.cam_dir, opts.report_dir,
                  sources=[checkpoint, sidecar_path(checkpoint)])
    result = BatchResult(len(inputs.files), inputs.skipped, followed=inputs.followed,
                         repeated=inputs.repeated)
    with _writers(opts):
        backend = load_backend(checkpoint, opts.engine, opts.device)
        backend.calibrated = opts.calibrated
        result.set_coverage, result.no_sets = _sets_of(backend, opts.calibrated)
        preds = iter_predictions(inputs.files, backend, cam_dir=opts.cam_dir,
                                 report_dir=opts.report_dir, batch_size=opts.batch_size)
        try:
            _consume(preds, opts, len(inputs.files), result, echo)
        finally:  # an interrupted batch's pictures get their index too
            preds.close()
            if opts.report_dir and result.kept:
                write_report_index(result.kept, opts.report_dir)
    return result


def _sets_of(backend, calibrated: bool) -> tuple[float | None, str | None]:
    """The coverage of the checkpoint's sets, or why there are none."""
    if backend.conformal is not None:
        return backend.conformal.coverage, None
    if not calibrated and backend.sidecar.get("conformal"):
        return None, "--uncalibrated: the sets were fitted on the calibrated probabilities"
    return None, "the checkpoint carries no conformal calibration; koa calibrate fits one"


def _consume(preds, opts: BatchOptions, total: int, result: BatchResult, echo) -> None:
    def seen(p: Prediction) -> None:
        result.failed += bool(p.error)
        if p.grade_set is not None:
            result.set_sizes.append(len(p.grade_set))
        result.flags.append(p.input_flags or [])
        if opts.keep or opts.report_dir:
            result.kept.append(p)
        if echo is not None:
            echo(p)

    if opts.out:
        write_predictions(preds, opts.out, total=total, progress=opts.progress, echo=seen)
    else:
        for p in preds:
            seen(p)


def predict_files(paths: list[str], checkpoint: str | Path | None = None,
                  cam_dir: str | Path | None = None, device: str | None = None,
                  engine: str = "torch", report_dir: str | Path | None = None
                  ) -> list[Prediction]:
    """Grade files and folders; unreadable files get an error entry and the rest go on."""
    opts = BatchOptions(checkpoint=checkpoint, engine=engine, device=device, cam_dir=cam_dir,
                        report_dir=report_dir, keep=True)
    return grade_batch(paths, opts).kept


def write_report_index(preds: list[Prediction], report_dir: str | Path) -> Path:
    """``index.html`` of a batch's report pictures (one row per file, failures included),
    drawn beside them and renamed into place: whole or not at all, and nothing in its way
    (a FIFO, a hard link) is opened."""
    entries = [{"name": plain_text(p.path),
                "picture": Path(p.report).name if p.report else None,
                "grade": p.grade, "probabilities": p.probabilities, "gate": p.gate,
                "set": (None if p.grade_set is None
                        else set_words(p.grade_set, p.set_coverage)),
                "flags": p.input_flags, "error": plain_text(p.error)} for p in preds]
    folder = Path(report_dir)
    folder.mkdir(parents=True, exist_ok=True)
    with _drawing_folder(folder) as tmp:
        drawn = write_html_index(entries, tmp, title="koa predict: knee KL grades")
        return _OutFolder(folder, tmp).place(drawn)
