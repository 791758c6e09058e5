"""The book runner: jupytext -> papermill -> ``jupyter-book build`` (``koa book``).

The chapters are jupytext percent-format sources in ``notebooks/*.py``. A build:

1. loads a parameter profile (``book/profiles/<name>.yaml``) and applies ``--set
   key=value`` overrides (values parsed as YAML);
2. finds the data: the ``demo`` profile writes the synthetic phantom (imbalanced like the
   paper's data) under the build folder once, the ``paper`` profile needs ``--data ROOT``;
3. converts every chapter to a notebook and executes it with papermill (kernel
   ``python3``, working directory the build folder), writing the executed notebook into
   ``book/notebooks/``; papermill's injected-parameters cell is tagged ``remove-input``
   (each chapter shows the values it was built with in a table, folders by name only);
4. runs ``jupyter-book build`` on the repository with notebook execution off (nothing runs
   twice) and warnings as errors (``-W -n --keep-going``).

Chapters share trained runs through ``runs_dir`` (see
:func:`koa_core.report.training.train_or_reuse`), so the book trains each configuration
once, and a second build reuses everything.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from koa_core.book.grader import stage_grader
from koa_core.book.landing import scorecard_markdown
from koa_core.book.model_card import PAGE as MODEL_CARD
from koa_core.book.model_card import model_card_markdown
from koa_core.config import check_values, int_at_least, load_config
from koa_core.errors import KoaError
from koa_core.experiments.campaign import load_plan
from koa_core.model.checkpoint import DEFAULT_CHECKPOINT
from koa_core.report.common import ensure_phantom

__all__ = ["find_book_root", "load_profile", "parse_sets", "chapter_parameters",
           "validate_parameters",
           "resolve_parameters", "convert", "execute", "build_html", "run_book",
           "write_scorecard", "write_model_card", "input_stamp", "shared_inputs", "book_config"]

INJECTED_TAG = "injected-parameters"
HIDE_TAG = "remove-input"  # the values (absolute paths) are shown by each chapter itself


def find_book_root(start: str | Path | None = None) -> Path:
    """The folder holding ``_config.yml``, ``_toc.yml`` and ``notebooks/`` (``start``, its
    parents, then the source checkout this package lives in)."""
    here = Path(start or Path.cwd()).resolve()
    for cand in [here, *here.parents, Path(__file__).resolve().parents[2]]:
        if all((cand / n).exists() for n in ("_config.yml", "_toc.yml", "notebooks")):
            return cand
    raise KoaError(f"{here}: no book here (expected _config.yml, _toc.yml and notebooks/); "
                   "run koa book from the project's folder or pass --root")


def load_profile(name: str, root: str | Path) -> dict:
    """A profile from ``ROOT/book/profiles/NAME.yaml`` (or a YAML path): a mapping with
    ``parameters`` (notebook parameters) and optionally ``phantom`` and ``needs_data``."""
    p = Path(name)
    if not p.suffix:
        p = Path(root) / "book" / "profiles" / f"{name}.yaml"
    if not p.is_file():
        known = sorted(q.stem for q in (Path(root) / "book" / "profiles").glob("*.yaml"))
        raise KoaError(f"book profile {name!r} not found (known: {', '.join(known)})")
    data = yaml.safe_load(p.read_text()) or {}
    if not isinstance(data, dict) or not isinstance(data.get("parameters"), dict):
        raise KoaError(f"{p}: a book profile needs a 'parameters' mapping")
    return data


def parse_sets(items: list[str] | None) -> dict:
    """``["n_boot=200", "train_sets=[train.epochs=3]"]`` -> ``{"n_boot": 200, ...}``
    (values are YAML scalars or lists; anything else stays the text given)."""
    out = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_]\w*", key.strip()):
            raise KoaError(f"--set {item!r}: expected name=value, e.g. n_boot=200")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        # No parameter is a mapping: "a: b" is a string with a colon, not {"a": "b"}.
        out[key.strip()] = text if isinstance(value, dict) else value
    return out


def _cells(py: str | Path):
    import jupytext

    return jupytext.read(str(py)).cells


def chapter_parameters(py: str | Path) -> set[str]:
    """Names assigned in the chapter's cell tagged ``parameters``."""
    cells = [c for c in _cells(py) if "parameters" in c.metadata.get("tags", [])]
    if len(cells) != 1:
        raise KoaError(f"{py}: expected exactly one cell tagged 'parameters', found {len(cells)}")
    return set(re.findall(r"^([A-Za-z_]\w*)\s*(?::[^=]*)?=", cells[0].source, re.M))


def _text(value) -> str | None:
    return None if value is None or isinstance(value, str) else "text"


def _settings(value) -> str | None:
    ok = isinstance(value, list) and all(isinstance(v, str) and "=" in v for v in value)
    return None if ok else "a list of SECTION.KEY=VALUE settings"


def _name_list(value) -> str | None:
    ok = isinstance(value, list) and all(isinstance(v, str) and v.strip() for v in value)
    return None if ok else "a list of names"


# The book parameters' kinds, checked by the configuration's own machinery
# (:func:`koa_core.config.check_values`): text (None allowed), counts at least their bound
# (``n_boot`` and ``clahe_images`` >= 1: a chapter needs one resample and one image;
# ``seed``, ``threads`` >= 0, 0 threads meaning torch's default), lists of settings and
# of names.
PARAMETER_RULES = {
    **{key: _text for key in ("data_root", "runs_dir", "checkpoint", "sample_root",
                              "records_dir", "recipe_dir", "stats_json", "shipped_eval",
                              "data_label")},
    "seed": int_at_least(0), "threads": int_at_least(0), "n_boot": int_at_least(1),
    "clahe_images": int_at_least(1),
    "train_sets": _settings, "recipe_sets": _settings,
    "train_profile": _name_list, "ablation_configs": _name_list, "recipe_plans": _name_list,
}


def validate_parameters(params: dict) -> None:
    """Check every book parameter before any chapter runs: each of its kind
    (:data:`PARAMETER_RULES`), and the training settings resolve to a valid configuration
    (:func:`koa_core.config.load_config` checks every field), as does each ablation
    configuration and recipe plan. One ``KoaError`` line names the parameter."""
    check_values(PARAMETER_RULES, params,
                 lambda k, v, p: f"book parameter {k}: expected {p}, got {v!r}")
    if "train_profile" in params:
        try:
            load_config(params["train_profile"], params.get("train_sets"))
        except KoaError as exc:
            raise KoaError(f"book parameter train_profile/train_sets: {exc}") from None
    for name in params.get("ablation_configs", []):
        try:
            load_config([name])
        except KoaError as exc:
            raise KoaError(f"book parameter ablation_configs: {exc}") from None
    for name in params.get("recipe_plans", []):
        try:
            load_plan(name.split(":")[0])  # "plan" or "plan:run,run"
        except KoaError as exc:
            raise KoaError(f"book parameter recipe_plans: {exc}") from None
    if params.get("recipe_sets"):
        try:
            load_config(["demo"], params["recipe_sets"])
        except KoaError as exc:
            raise KoaError(f"book parameter recipe_sets: {exc}") from None


def resolve_parameters(profile: dict, sets: dict, data: str | None, build_dir: Path,
                       root: Path | None = None) -> dict:
    """The parameters every chapter gets: the profile's, then ``--set`` ones, then the
    data root (given, or the phantom written under ``build_dir``) and absolute folders
    (``runs_dir`` defaults to ``build_dir/runs/<profile name>``). Parameters the profile
    lists under ``paths`` are made absolute against the book's ``root`` (the published
    profile's committed records and sample); one that does not exist is an error."""
    params = {**profile["parameters"], **sets}
    for key in profile.get("paths") or []:
        value = params.get(key)
        if value and root is not None:
            path = Path(value).expanduser()
            path = path if path.is_absolute() else Path(root) / path
            if not path.exists():
                raise KoaError(f"book parameter {key}: {value} not found")
            params[key] = str(path.resolve())
    unknown = set(sets) - set(profile["parameters"])
    if unknown:
        raise KoaError(f"--set: unknown book parameter(s) {', '.join(sorted(unknown))} "
                       f"(known: {', '.join(sorted(profile['parameters']))})")
    validate_parameters(params)
    if data:
        params["data_root"] = str(Path(data).expanduser().resolve())
    elif profile.get("needs_data"):
        raise KoaError("this book profile needs a dataset: pass --data ROOT "
                       "(ROOT/{train,val,test}/{0..4}/*.png)")
    elif not params.get("data_root"):
        ph = {"per_class": 60, "seed": 0, "size": 224, "proportions": "paper",
              **(profile.get("phantom") or {})}
        name = "phantom-{proportions}-n{per_class}-seed{seed}-{size}px".format(**ph)
        params["data_root"] = str(ensure_phantom(build_dir / "data" / name, **ph))
    runs = params.get("runs_dir") or build_dir / "runs" / profile.get("name", "book")
    params["runs_dir"] = str(Path(runs).expanduser().resolve())
    return params


def convert(py: str | Path, ipynb: str | Path) -> Path:
    """jupytext: percent-format ``.py`` -> ``.ipynb`` (with the python3 kernelspec). Code
    cells are collapsed in the book (``hide-input``: a reader opens one with a click); the
    parameters cell is not shown at all (``remove-input``), since each chapter shows the
    values it was built with in a table."""
    import jupytext

    nb = jupytext.read(str(py))
    for cell in nb.cells:
        tags = cell.metadata.setdefault("tags", [])
        if cell.cell_type != "code" or {"hide-input", "remove-input", "remove-cell"} & set(tags):
            continue
        tags.append(HIDE_TAG if "parameters" in tags else "hide-input")
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.metadata.pop("jupytext", None)
    Path(ipynb).parent.mkdir(parents=True, exist_ok=True)
    jupytext.write(nb, str(ipynb), fmt="ipynb")
    return Path(ipynb)


def _hide_injected(path: Path, root: Path | None = None) -> None:
    """Tag papermill's injected cell ``remove-input``; with ``root``, also write the paths
    under it, in that cell and in papermill's metadata, relative to it (the saved notebook
    is offered for download and should not carry the build machine's folders)."""
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    prefix = f"{Path(root).resolve()}/" if root else None
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if INJECTED_TAG in tags and HIDE_TAG not in tags:
            cell.metadata["tags"] = [*tags, HIDE_TAG]
        if INJECTED_TAG in tags and prefix:
            cell.source = cell.source.replace(prefix, "")
    meta = nb.metadata.get("papermill", {})
    if prefix:
        for key, value in list(meta.items()):
            if isinstance(value, str):
                meta[key] = value.replace(prefix, "")
        meta["parameters"] = {k: v.replace(prefix, "") if isinstance(v, str) else v
                              for k, v in (meta.get("parameters") or {}).items()}
    nbformat.write(nb, str(path))


def execute(ipynb: str | Path, out: str | Path, params: dict, cwd: str | Path,
            timeout: int | None = None, relative_to: str | Path | None = None) -> Path:
    """Execute with papermill, passing only the parameters the notebook declares; the saved
    notebook shows paths under ``relative_to`` relative to it."""
    import papermill

    declared = set(papermill.inspect_notebook(str(ipynb)))
    try:
        papermill.execute_notebook(str(ipynb), str(out), kernel_name="python3",
                                   parameters={k: v for k, v in params.items() if k in declared},
                                   progress_bar=False, cwd=str(cwd), execution_timeout=timeout)
    except papermill.PapermillExecutionError as exc:
        raise KoaError(f"{Path(ipynb).stem}: cell {exc.exec_count} failed: {exc.ename}: "
                       f"{exc.evalue} (executed notebook with the traceback: {out})") from None
    _hide_injected(Path(out), relative_to)
    return Path(out)


def write_scorecard(root: Path, params: dict, profile: str) -> Path:
    """``book/scorecard.md``, included by the landing page: the paper's claims against the
    records in ``records_dir`` (the committed GPU campaign unless the profile names
    others), computed at every build (:mod:`koa_core.experiments.scorecard`)."""
    records = params.get("records_dir") or str(root / "results" / "gpu" / "runs")
    path = root / "book" / "scorecard.md"
    text = scorecard_markdown(records, params.get("shipped_eval") or None, profile=profile,
                              sample_root=params.get("sample_root") or None,
                              assets=root / "book" / "generated",
                              checkpoint=params.get("checkpoint") or None)
    if not path.exists() or path.read_text() != text:  # unchanged: the page is not re-read
        path.write_text(text)
    return path


def write_model_card(root: Path) -> Path:
    """``book/model_card.md``: the shipped checkpoint's model card, from its sidecar, its
    CPU re-evaluation and the data statistics (:mod:`koa_core.book.model_card`)."""
    path = root / "book" / f"{MODEL_CARD}.md"
    results = root / "results"
    text = model_card_markdown(DEFAULT_CHECKPOINT, results / "gpu" / "shipped-val-cpu.json",
                               results / "data-stats.json")
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


def build_html(root: str | Path, strict: bool = True, config: Path | None = None) -> Path:
    """``jupyter-book build ROOT [-W -n --keep-going] [--config FILE]``; returns
    ``ROOT/_build/html``."""
    exe = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(exe) if exe.exists() else (shutil.which("jupyter-book") or "jupyter-book"),
           "build", str(root)] + (["-W", "-n", "--keep-going"] if strict else [])
    if config is not None:
        cmd += ["--config", str(config)]
    if subprocess.run(cmd, cwd=str(root), check=False).returncode:
        raise KoaError("jupyter-book build failed (warnings count as errors); see above")
    return Path(root) / "_build" / "html"


def _digest_path(h, path: Path) -> None:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        h.update(hashlib.sha256(f.read_bytes()).digest())


def input_stamp(py: Path, params: dict, root: Path, shared: str | None = None) -> str:
    """What a chapter's output depends on, hashed: its source and :func:`shared_inputs`
    (``shared``, computed once per build when given). An executed chapter whose stamp
    matches is not executed again."""
    h = hashlib.sha256(Path(py).read_bytes())
    h.update((shared or shared_inputs(params)).encode())
    return h.hexdigest()


def shared_inputs(params: dict) -> str:
    """What every chapter depends on, hashed: the parameters, the package's code and
    bundled files, and the contents of every file or folder a parameter names (data,
    records, checkpoint), except ``runs_dir``, whose runs are made from the rest."""
    h = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode())
    pkg = Path(__file__).resolve().parents[1]
    for f in sorted(pkg.rglob("*")):
        if f.is_file() and f.suffix in (".py", ".yaml", ".json"):
            h.update(str(f.relative_to(pkg)).encode())
            h.update(hashlib.sha256(f.read_bytes()).digest())
    for key, value in sorted(params.items()):
        if key == "runs_dir" or not isinstance(value, str) or not value.startswith("/"):
            continue
        path = Path(value)
        if path.exists():
            _digest_path(h, path)
    return h.hexdigest()


def _stamp_of(ipynb: Path) -> str | None:
    """The input stamp an executed chapter was made from (None if it has none)."""
    if not ipynb.exists():
        return None
    try:
        meta = json.loads(ipynb.read_text()).get("metadata", {})
    except (OSError, ValueError):
        return None
    return (meta.get("koa_book") or {}).get("input_stamp")


def _write_stamp(ipynb: Path, stamp: str) -> None:
    import nbformat

    nb = nbformat.read(str(ipynb), as_version=4)
    nb.metadata["koa_book"] = {"input_stamp": stamp}
    nbformat.write(nb, str(ipynb))


def book_config(root: Path, prof: dict, build_dir: Path) -> Path:
    """The Jupyter Book configuration of this profile: ``_config.yml``, plus the profile's
    ``footer`` where it has one (the demo's says its numbers come from the phantom; the
    published book has none)."""
    base = root / "_config.yml"
    if not prof.get("footer"):
        return base
    cfg = yaml.safe_load(base.read_text())
    cfg.setdefault("html", {})["extra_footer"] = str(prof["footer"])
    # Jupyter Book finds local extensions relative to the configuration file's folder
    ext = (cfg.get("sphinx") or {}).get("local_extensions") or {}
    for name, folder in ext.items():
        ext[name] = str((root / folder).resolve())
    out = build_dir / f"_config-{prof['name']}.yml"
    text = yaml.safe_dump(cfg, sort_keys=False)
    if not out.exists() or out.read_text() != text:
        out.write_text(text)
    return out


def run_book(profile: str = "demo", data: str | None = None, sets: list[str] | None = None,
             root: str | Path | None = None, only: list[str] | None = None,
             html: bool = True, log=print) -> dict:
    """Execute every chapter (or those whose name contains one of ``only``) and build the
    HTML. Returns {"html": path or None, "seconds": {chapter: s}, "parameters": dict}."""
    root = find_book_root(root)
    prof = {"name": Path(profile).stem, **load_profile(profile, root)}
    build_dir = root / "_build"
    params = resolve_parameters(prof, parse_sets(sets), data, build_dir, root)
    build_dir.mkdir(parents=True, exist_ok=True)
    write_scorecard(root, params, prof["name"])
    write_model_card(root)
    os.environ.setdefault("KOA_CACHE_DIR", str(build_dir / "cache"))
    chapters = sorted((root / "notebooks").glob("*.py"))
    if only:
        chapters = [c for c in chapters if any(o in c.stem for o in only)]
    out_dir, seconds = root / "book" / "notebooks", {}
    out_dir.mkdir(parents=True, exist_ok=True)
    shared = shared_inputs(params)  # the package and the data are hashed once per build
    for py in chapters:
        t0 = time.perf_counter()
        out, stamp = out_dir / f"{py.stem}.ipynb", input_stamp(py, params, root, shared)
        if _stamp_of(out) == stamp:
            log(f"koa book: {py.stem} unchanged (inputs as when it was executed), kept")
            continue
        log(f"koa book: {py.stem} ...")
        src = convert(py, build_dir / "notebooks-src" / f"{py.stem}.ipynb")
        execute(src, out, params, cwd=build_dir, timeout=prof.get("cell_timeout"),
                relative_to=root)
        _write_stamp(out, stamp)
        seconds[py.stem] = round(time.perf_counter() - t0, 1)
        log(f"koa book: {py.stem} done in {seconds[py.stem]:.0f} s")
    if html:
        stage_grader(root, log=log)  # book/grade.md's files: model, runtime, code
    path = build_html(root, config=book_config(root, prof, build_dir)) if html else None
    return {"html": str(path) if path else None, "seconds": seconds, "parameters": params}
