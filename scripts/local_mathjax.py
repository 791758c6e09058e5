"""Sphinx extension: serve MathJax 3 from the built book itself, never from a CDN.

Loaded by ``_config.yml`` (``sphinx: local_extensions: {local_mathjax: scripts/}``), which
also sets ``mathjax_path`` to a path *relative to* ``_static`` (``mathjax/tex-chtml.js``).
The MathJax files come from the PyPI package ``django-static-mathjax`` (MathJax 3.2.2,
Apache-2.0; it has no dependencies and does not import Django), installed by the ``book``
extra of pyproject.toml. After an HTML build this extension copies into
``_build/html/_static/mathjax/`` only what a page needs offline:

- the combined component named by ``mathjax_path`` (``tex-chtml.js``: TeX input, CommonHTML
  output, the menu and assistive MathML, about 1.2 MB);
- the CommonHTML fonts (``output/chtml/fonts/woff-v2``, 0.35 MB) when the output is CHTML;
- the TeX extensions that ``\\require`` and autoload fetch on demand (``input/tex/
  extensions``, 0.5 MB), e.g. for ``\\boldsymbol`` or ``\\cancel``;
- MathJax's LICENSE.

MathJax finds fonts and extensions relative to its own script, so the copy keeps the
package's layout. A ``mathjax_path`` that is a URL (``http:``, ``https:`` or ``//``) or a
missing package stops the build with an error, so a book can never fall back to a CDN.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.errors import ExtensionError

DIST = "django-static-mathjax"
ES5 = "mathjax/static/mathjax/es5"          # inside the distribution's install folder
LICENSE = "mathjax/static/mathjax/LICENSE"
TARGET = "mathjax"                          # under the HTML output's _static/


def is_remote(path: str) -> bool:
    """True for a URL (``https://...``, ``//cdn...``, ``data:``), False for a local path."""
    p = path.strip().lower()
    return p.startswith("//") or ":" in p.split("/", 1)[0]


def source_dir() -> Path:
    """The installed MathJax ``es5`` folder (raises ExtensionError when it is missing)."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        es5 = Path(distribution(DIST).locate_file(ES5))
    except PackageNotFoundError:
        es5 = None
    if es5 is None or not (es5 / "tex-chtml.js").is_file():
        raise ExtensionError(f"local_mathjax: the PyPI package {DIST} is not installed; "
                             "run `make install` (or pip install -e '.[book]')")
    return es5


def component(mathjax_path: str) -> str:
    """The combined component file a ``mathjax_path`` names, e.g. ``tex-chtml.js``."""
    if is_remote(mathjax_path):
        raise ExtensionError(f"local_mathjax: mathjax_path {mathjax_path!r} is a URL; set it "
                             f"to '{TARGET}/tex-chtml.js' so MathJax is served from _static")
    parts = Path(mathjax_path).parts
    if len(parts) != 2 or parts[0] != TARGET:
        raise ExtensionError(f"local_mathjax: mathjax_path {mathjax_path!r} must be "
                             f"'{TARGET}/<component>.js', relative to _static")
    return parts[1]


def files_to_copy(es5: Path, name: str) -> list[tuple[Path, str]]:
    """``(source, path relative to _static/mathjax)`` for every file a page may load."""
    if not (es5 / name).is_file():
        known = sorted(p.name for p in es5.glob("*.js"))
        raise ExtensionError(f"local_mathjax: no MathJax component {name!r} "
                             f"(known: {', '.join(known)})")
    out = [(es5 / name, name), (es5.parent / "LICENSE", "LICENSE")]
    folders = ["input/tex/extensions"]
    if "chtml" in name:
        folders.append("output/chtml/fonts/woff-v2")
    for folder in folders:
        for f in sorted((es5 / folder).rglob("*")):
            if f.is_file():
                out.append((f, f.relative_to(es5).as_posix()))
    return out


def check_config(app: Sphinx) -> None:
    """At ``builder-inited``: fail early on a URL or on a missing package."""
    if app.builder.format != "html":
        return
    files_to_copy(source_dir(), component(app.config.mathjax_path))


def copy_mathjax(app: Sphinx, exc: Exception | None) -> None:
    """At ``build-finished``: copy the files into ``<outdir>/_static/mathjax``."""
    if exc is not None or app.builder.format != "html":
        return
    dest = Path(app.outdir) / "_static" / TARGET
    for src, rel in files_to_copy(source_dir(), component(app.config.mathjax_path)):
        target = dest / rel
        if target.is_file() and target.stat().st_size == src.stat().st_size \
                and target.stat().st_mtime >= src.stat().st_mtime:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)


def setup(app: Sphinx) -> dict:
    app.setup_extension("sphinx.ext.mathjax")
    app.connect("builder-inited", check_config)
    app.connect("build-finished", copy_mathjax)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
