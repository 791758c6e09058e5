"""Grading the files people have: folders, batches, CSV, Grad-CAM and reports (paper §3.1).

``koa predict DIR_OR_FILES...`` runs here:

* **inputs** (:func:`collect_inputs`): files named on the command line are always tried;
  folders are walked in sorted order (hidden entries skipped) for PNG, JPEG, WebP, TIFF and
  DICOM files - DICOM also without a suffix, recognised by its ``DICM`` preamble. Other
  files in a folder are skipped and counted.
* **batches**: files are decoded and preprocessed by a small thread pool a batch ahead of
  the network, graded a batch at a time, and forgotten: memory stays flat however many
  files there are. A file that cannot be read, or whose prediction fails, gets its error
  in its row and the batch goes on.
* **rows** (:data:`CSV_FIELDS`): grade, the five probabilities, the gate, the precision
  and engine that ran the network, the temperature applied (``koa calibrate``), the
  image's size, DICOM photometry and pixel spacing, and the error. ``--out`` receives
  each row as soon as it is graded and is flushed, so an interrupted batch leaves a valid
  CSV of the files graded so far.
* **explanations**: ``--cam DIR`` writes each stream's Grad-CAM over the input image at its
  own resolution (the map is computed on the model's input, the crop of
  :func:`~koa_core.data.preprocess.crop_box`, and drawn back where that crop came from);
  ``--report DIR`` writes one picture per knee (:mod:`koa_core.infer.knee_report`) and an
  ``index.html`` for the batch.

Nothing is ever written beside the inputs: outputs go only where the options say. An
output that is one of the inputs is refused; an output folder inside a walked input folder
is left out of the walk (and the summary says so), so a later run does not grade its own
pictures. CAM and report files are named after the input's stem, with a short digest of
its path when two inputs share a stem or the stem is long, so that no two knees share a
picture. Printed names escape control characters, and CSV cells that a spreadsheet would
run as a formula (``= + - @``, tab, carriage return first) start with a single quote.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from koa_core import GRADE_NAMES
from koa_core.errors import KoaError, printable
from koa_core.files import check_writable
from koa_core.data.imaging import is_image_file, read_image
from koa_core.data.preprocess import Preprocessor, apply_clahe, crop_box
from koa_core.data.dicom import is_dicom
from koa_core.data.inputcheck import describe, summarize_flags
from koa_core.infer.profile import check_for
from koa_core.infer.backends import load_backend
from koa_core.infer.evaluate import preprocessor_from_sidecar
from koa_core.infer.explain import grad_cam, overlay, stream_layers
from koa_core.infer.knee_report import KneeReport, render_report, write_html_index
from koa_core.model.checkpoint import resolve_checkpoint

__all__ = ["CSV_FIELDS", "BatchOptions", "BatchResult", "Prediction", "collect_inputs", "csv_cell",
           "grade_batch", "iter_predictions", "predict_files", "write_predictions"]

CSV_FIELDS = ["path", "grade", "p0", "p1", "p2", "p3", "p4", "gate_raw", "gate_clahe",
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
    size: list[int] | None = None  # [height, width] of the input image
    dicom: dict | None = None  # photometric interpretation, pixel spacing, window...
    input_flags: list[str] | None = None  # koa_core.data.inputcheck: [] when the image passed
    error: str | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    def line(self) -> str:
        """The printed line: control characters in the name or error are escaped, so a
        name holding a newline cannot forge a second result line."""
        path = printable(self.path)
        if self.error:
            return f"{path}: error: {printable(self.error)}"
        probs = " ".join(f"{p:.3f}" for p in self.probabilities)
        flags = f"  [input check: {', '.join(self.input_flags)}]" if self.input_flags else ""
        return f"{path}: KL{self.grade} ({GRADE_NAMES[self.grade].split(' ', 1)[1]})  " \
               f"p[KL0..KL4] = {probs}{flags}"

    def row(self) -> dict:
        p = self.probabilities or [None] * 5
        g = self.gate or [None, None]
        d = self.dicom or {}
        spacing = d.get("pixel_spacing_mm")
        return {"path": csv_cell(self.path), "grade": self.grade,
                **{f"p{k}": _fmt(p[k]) for k in range(5)},
                "gate_raw": _fmt(g[0]), "gate_clahe": _fmt(g[1]),
                "precision": self.precision, "engine": self.engine,
                "temperature": _fmt(self.temperature),
                "width": self.size[1] if self.size else None,
                "height": self.size[0] if self.size else None,
                "photometric": csv_cell(d.get("photometric")),
                "pixel_spacing_mm": " ".join(f"{v:g}" for v in spacing) if spacing else None,
                "input_check": ("; ".join(self.input_flags) or "ok"
                                if self.input_flags is not None else None),
                "error": csv_cell(self.error)}


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
    left_out: list[str] = field(default_factory=list)  # output folders met in the walk


def _looks_like_image(path: Path) -> bool:
    if is_image_file(path):
        return True
    return is_dicom(path)  # stats first: a FIFO or a device is never opened


def _real(path: str | Path) -> str:
    return os.path.realpath(os.path.abspath(path))


def collect_inputs(paths: list[str], outputs: list[str | Path] = ()) -> Inputs:
    """Files to grade: named files as given, folders walked (sorted, hidden entries
    skipped). An empty name is refused (it is not the current folder); ``outputs`` (the
    batch's own output files and folders) are left out of the walk and listed."""
    found = Inputs()
    skip = {_real(o) for o in outputs if o}
    for arg in paths:
        if not str(arg).strip():
            raise KoaError("an empty file name was given (use . for the current folder)")
        p = Path(arg)
        if not p.is_dir():
            found.files.append(arg)
            continue
        for dirpath, dirnames, filenames in os.walk(p):
            kept = []
            for d in sorted(dirnames):
                if d.startswith("."):
                    continue
                if _real(Path(dirpath) / d) in skip:
                    found.left_out.append(str(Path(dirpath) / d))
                    continue
                kept.append(d)
            dirnames[:] = kept
            for name in sorted(filenames):
                f = Path(dirpath) / name
                if name.startswith(".") or _real(f) in skip:
                    continue
                if _looks_like_image(f):
                    found.files.append(str(f))
                else:
                    found.skipped += 1
    return found


def check_outputs(files: list[str], out: str | Path | None, folders: list[str | Path]) -> None:
    """Refuse an output that is one of the inputs (``koa predict a.webp --out a.webp`` would
    replace the image with the CSV), or an output folder that is an input file."""
    inputs = {_real(f): f for f in files}
    for what, path in [("--out", out)] + [("output folder", f) for f in folders]:
        if path and _real(path) in inputs:
            raise KoaError(f"{path}: {what} is one of the input files; refused (it would be "
                           "overwritten)")


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


def _explain(backend, item: _Loaded, pred: Prediction, pre: Preprocessor, stem: str,
             cam_dir: Path | None, report_dir: Path | None) -> None:
    model = backend.cam_model
    shape = item.image.shape
    clahe_full = apply_clahe(item.image, pre.clahe_clip, pre.clahe_tiles)
    cams = {s: cam_on_input(grad_cam(model, item.views, pred.grade, s), shape, item.box)
            for s in stream_layers(model)}
    if cam_dir is not None:
        pred.cams = []
        for stream, cam_map in cams.items():
            path = cam_dir / f"{stem}_{stream}_cam.png"
            under = item.image if stream == "raw" else clahe_full
            top, left, h, w = item.box  # heat only where the model looked; the rest as is
            pic = np.repeat(under[..., None], 3, axis=2)
            pic[top:top + h, left:left + w] = overlay(under[top:top + h, left:left + w],
                                                      cam_map[top:top + h, left:left + w])
            if not cv2.imwrite(str(path), cv2.cvtColor(pic, cv2.COLOR_RGB2BGR)):
                raise OSError(f"could not write {path}")
            pred.cams.append(str(path))
    if report_dir is not None:
        details = {"precision": pred.precision, "engine": pred.engine}
        if pre.input_clahe_clip is not None:
            details["input transform"] = f"{pre.describe_input()} (as trained)"
        if item.flags:
            details["INPUT CHECK"] = describe(item.flags)
        if pred.temperature is not None:
            details["temperature"] = f"{pred.temperature:.3f} (koa calibrate)"
        meta = item.meta or {}
        if meta.get("pixel_spacing_mm"):
            details["pixel spacing"] = " x ".join(f"{v:g}" for v in
                                                  meta["pixel_spacing_mm"]) + " mm"
        if meta.get("photometric"):
            details["DICOM"] = meta["photometric"]
        report = KneeReport(name=printable(Path(item.path).name), image=item.image,
                            probabilities=pred.probabilities, grade=pred.grade,
                            gate=pred.gate, cams=cams, clahe_image=clahe_full,
                            details=details)
        pred.report = str(render_report(report, report_dir / f"{stem}_report.png"))


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
    pre = preprocessor_from_sidecar(backend.sidecar)
    check = check_for(backend.sidecar)
    cam_dir = _make_dir(cam_dir, "Grad-CAM")
    report_dir = _make_dir(report_dir, "report")
    if (cam_dir or report_dir) and getattr(backend, "cam_model", None) is None:
        raise KoaError("Grad-CAM (--cam, --report) needs the .safetensors checkpoint; an ONNX "
                       "file has no gradients")
    # checked above, before the caller writes anything; the batches run lazily below
    return _predictions(files, backend, (pre, check), cam_dir, report_dir, batch_size, workers)


def _predictions(files, backend, prepare, cam_dir, report_dir, batch_size, workers):
    pre, check = prepare
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
                j += 1
                if cam_dir or report_dir:
                    _explain_one(backend, item, pred, pre, stems[i], (cam_dir, report_dir))
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
    """Stream predictions into the CSV ``out``, a flushed row per file; counts by outcome."""
    from tqdm.auto import tqdm

    out = Path(out)
    check_writable(out)
    counts = {"graded": 0, "failed": 0}
    try:
        with open(out, "w", newline="") as fh, tqdm(total=total, unit="img",
                                                      disable=not progress, desc="grading",
                                                      leave=False) as bar:
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
    except OSError as exc:  # a full disk (/dev/full), a vanished folder: name the CSV
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
    left_out: list[str] = field(default_factory=list)  # output folders inside the inputs
    flags: list[list[str]] = field(default_factory=list)
    kept: list[Prediction] = field(default_factory=list)

    def summary(self, out: str | Path | None = None) -> str:
        """The batch's closing line: 'graded 9 of 10 file(s), 1 failed; ...'."""
        flagged = summarize_flags(self.flags)
        return (f"graded {self.files - self.failed} of {self.files} file(s), {self.failed} failed"
                + (f"; {flagged}" if flagged else "")
                + (f"; skipped {self.skipped} file(s) that are not images" if self.skipped
                   else "")
                + "".join(f"; left out the output folder {printable(f)} inside the input"
                          for f in self.left_out)
                + (f"; rows in {printable(str(out))}" if out else ""))


def grade_batch(paths: list[str], opts: BatchOptions | None = None,
                echo: Callable[[Prediction], None] | None = None) -> BatchResult:
    """Grade files and folders (the one front door of ``koa predict`` and
    :func:`predict_files`): each file's Prediction goes to ``echo`` as soon as it is graded
    and, with ``opts.out``, into the CSV; a bad file gets an error entry and the rest go on.
    An interrupt (KeyboardInterrupt) leaves the rows written so far and propagates."""
    opts = opts or BatchOptions()
    folders = [f for f in (opts.cam_dir, opts.report_dir) if f]
    inputs = collect_inputs(paths, outputs=[opts.out, *folders] if opts.out else folders)
    if not inputs.files:
        raise KoaError(f"no image files found in {', '.join(map(str, paths))} (PNG, JPEG, "
                       "WebP, TIFF or DICOM)")
    check_outputs(inputs.files, opts.out, folders)
    backend = load_backend(resolve_checkpoint(opts.checkpoint), opts.engine, opts.device)
    backend.calibrated = opts.calibrated
    preds = iter_predictions(inputs.files, backend, cam_dir=opts.cam_dir,
                             report_dir=opts.report_dir, batch_size=opts.batch_size)
    result = BatchResult(len(inputs.files), inputs.skipped, left_out=inputs.left_out)

    def seen(p: Prediction) -> None:
        result.failed += bool(p.error)
        result.flags.append(p.input_flags or [])
        if opts.keep or opts.report_dir:
            result.kept.append(p)
        if echo is not None:
            echo(p)

    try:
        if opts.out:
            write_predictions(preds, opts.out, total=len(inputs.files),
                              progress=opts.progress, echo=seen)
        else:
            for p in preds:
                seen(p)
    finally:  # an interrupted batch's pictures get their index too
        if opts.report_dir and result.kept:
            write_report_index(result.kept, opts.report_dir)
    return result


def predict_files(paths: list[str], checkpoint: str | Path | None = None,
                  cam_dir: str | Path | None = None, device: str | None = None,
                  engine: str = "torch", report_dir: str | Path | None = None
                  ) -> list[Prediction]:
    """Grade files and folders; unreadable files get an error entry and the rest go on."""
    opts = BatchOptions(checkpoint=checkpoint, engine=engine, device=device, cam_dir=cam_dir,
                        report_dir=report_dir, keep=True)
    return grade_batch(paths, opts).kept


def write_report_index(preds: list[Prediction], report_dir: str | Path) -> Path:
    """``index.html`` of a batch's report pictures (one row per file, failures included)."""
    entries = [{"name": p.path, "picture": Path(p.report).name if p.report else None,
                "grade": p.grade, "probabilities": p.probabilities, "gate": p.gate,
                "flags": p.input_flags, "error": p.error} for p in preds]
    return write_html_index(entries, report_dir, title="koa predict: knee KL grades")
