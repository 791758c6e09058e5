"""MathJax served by the book itself: the configuration, the extension that copies MathJax
(scripts/local_mathjax.py), the HTML check's MathJax and script rules, and one small book
built with the real _config.yml and opened in Chromium (slow; Chromium part skipped without
Debian's chromium)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CONFIG = yaml.safe_load((REPO / "_config.yml").read_text())


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def ext():
    pytest.importorskip("sphinx")
    return _load("local_mathjax")


@pytest.fixture(scope="module")
def chk():
    return _load("check_book_html")


# ---------------------------------------------------------------- configuration
def test_config_serves_mathjax_from_the_book():
    sphinx = CONFIG["sphinx"]
    path = sphinx["config"]["mathjax_path"]
    assert path == "mathjax/tex-chtml.js"           # relative: resolved under _static/
    assert "//" not in path and ":" not in path
    assert sphinx["local_extensions"] == {"local_mathjax": "scripts/"}
    assert (REPO / "scripts" / "local_mathjax.py").is_file()
    assert {"dollarmath", "amsmath"} <= set(CONFIG["parse"]["myst_enable_extensions"])
    text = (REPO / "_config.yml").read_text().lower()
    for cdn in ("cdn.jsdelivr", "cdnjs", "unpkg", "mathjax.org", "polyfill.io"):
        assert cdn not in text, cdn


def test_book_extra_installs_the_mathjax_package():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    book = project["optional-dependencies"]["book"]
    assert any(d.startswith("django-static-mathjax") for d in book), book


def test_is_remote(ext):
    for url in ("https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-chtml.js", "http://x/m.js",
                "//cdn.example/mathjax.js", "data:text/javascript,1"):
        assert ext.is_remote(url), url
    for local in ("mathjax/tex-chtml.js", "tex-chtml.js"):
        assert not ext.is_remote(local), local


@pytest.mark.parametrize("path, message", [
    ("https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-chtml.js", "is a URL"),
    ("//cdn.example/tex-chtml.js", "is a URL"),
    ("tex-chtml.js", "must be 'mathjax/"),
    ("mathjax/es5/tex-chtml.js", "must be 'mathjax/"),
])
def test_a_cdn_or_odd_mathjax_path_stops_the_build(ext, path, message):
    from sphinx.errors import ExtensionError

    with pytest.raises(ExtensionError, match=message):
        ext.component(path)


# ---------------------------------------------------------------- the installed files
def test_installed_package_has_the_configured_component(ext):
    es5 = ext.source_dir()
    name = ext.component(CONFIG["sphinx"]["config"]["mathjax_path"])
    assert (es5 / name).is_file()
    version = json.loads((es5.parent / "package.json").read_text())["version"]
    assert version.startswith("3."), version
    assert "Apache License" in (es5.parent / "LICENSE").read_text()


def test_files_copied_are_few_and_small(ext):
    es5 = ext.source_dir()
    files = ext.files_to_copy(es5, "tex-chtml.js")
    rels = {rel for _, rel in files}
    assert {"tex-chtml.js", "LICENSE", "input/tex/extensions/boldsymbol.js",
            "output/chtml/fonts/woff-v2/MathJax_Main-Regular.woff"} <= rels
    assert not any(r.startswith(("sre/", "a11y/")) or r.endswith(".ts") for r in rels)
    size = sum(src.stat().st_size for src, _ in files)
    assert size < 3_000_000, size                   # about 2.1 MB
    svg = {rel for _, rel in ext.files_to_copy(es5, "tex-svg.js")}
    assert not any("woff" in r for r in svg)        # SVG output needs no font files


def test_copy_mathjax_writes_under_static(ext, tmp_path):
    app = SimpleNamespace(outdir=str(tmp_path), builder=SimpleNamespace(format="html"),
                          config=SimpleNamespace(mathjax_path="mathjax/tex-chtml.js"))
    ext.copy_mathjax(app, None)
    dest = tmp_path / "_static" / "mathjax"
    assert (dest / "tex-chtml.js").stat().st_size > 500_000
    assert (dest / "output" / "chtml" / "fonts" / "woff-v2" / "MathJax_Zero.woff").is_file()
    ext.copy_mathjax(app, None)                     # a rebuild: nothing to do, no error
    app.builder.format = "latex"                    # other builders: nothing copied
    shutil.rmtree(dest)
    ext.copy_mathjax(app, None)
    assert not dest.exists()


# ---------------------------------------------------------------- the HTML check's rules
MJX = '<mjx-container class="MathJax" jax="CHTML"><mjx-math></mjx-math></mjx-container>'


def _page(tmp_path, body, head=""):
    (tmp_path / "fig.png").write_bytes(b"png")
    (tmp_path / "_static" / "mathjax").mkdir(parents=True, exist_ok=True)
    (tmp_path / "_static" / "mathjax" / "tex-chtml.js").write_text("//")
    return (f'<html><head>{head}</head><body><img src="fig.png"><table></table>{body}'
            '</body></html>')


def test_check_accepts_rendered_math(tmp_path, chk):
    head = '<script defer src="_static/mathjax/tex-chtml.js"></script>'
    body = (f'<p>cost $5 and $10</p><span class="math notranslate nohighlight">{MJX}</span>'
            f'<div class="math notranslate nohighlight">{MJX}</div>'
            '<pre>echo "\\(x\\)" $HOME $a_b$</pre>')
    dom = _page(tmp_path, body, head)
    assert chk.check_page(dom, tmp_path / "p.html") == []
    assert chk.math_count(dom) == (2, 2)


@pytest.mark.parametrize("head, body, problem", [
    ('<script src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-chtml.js"></script>', "",
     "external script https://cdn.jsdelivr.net"),
    ('<script src="//cdnjs.cloudflare.com/ajax/libs/mathjax/2.7.7/MathJax.js"></script>', "",
     "external script //cdnjs"),
    ('<script src="_static/mathjax/tex-svg.js"></script>', "",
     "script file missing: _static/mathjax/tex-svg.js"),
    ("<script>var s = document.createElement('script'); "
     "s.src = 'https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js';</script>", "",
     "an inline script loads MathJax"),
    ("", '<span class="math notranslate nohighlight">\\(\\alpha\\)</span>',
     "MathJax rendered 0 of 1"),
    ("", f'<span class="math">{MJX}</span><span class="math">\\(x\\)</span>',
     "MathJax rendered 1 of 2"),
    ("", '<span class="math"><mjx-container><mjx-merror></mjx-merror></mjx-container></span>',
     "TeX error"),
    ("", "<p>the loss $L = -\\alpha (1-p)^\\gamma \\log p$ is</p>", "raw TeX not rendered"),
    ("", "<p>$$x^2$$</p>", "raw TeX not rendered"),
])
def test_check_finds_mathjax_problems(tmp_path, chk, head, body, problem):
    problems = chk.check_page(_page(tmp_path, body, head), tmp_path / "p.html")
    assert any(problem in p for p in problems), problems


def test_check_source_reads_the_written_file(tmp_path, chk):
    page = tmp_path / "p.html"
    page.write_text('<script src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-chtml.js">'
                    '</script><script src="file:///nonexistent/x.js"></script>')
    problems = chk.check_source(page)
    assert any("external script" in p for p in problems), problems
    assert any("script file missing: file:///nonexistent/x.js" in p for p in problems)


def test_chromium_runs_offline_and_waits_for_scripts(chk):
    assert any(f.startswith("--host-resolver-rules=") for f in chk.FLAGS)
    assert any(f.startswith("--virtual-time-budget=") for f in chk.FLAGS)


# ---------------------------------------------------------------- a small book, end to end
PAGE = r"""# Focal loss

The weighted focal loss is $L = -\alpha_c\,(1 - p)^{\gamma}\log p$.

$$
\mathrm{FL}(p_t) = -\boldsymbol{\alpha}_t\,(1-p_t)^{\gamma}\,\log(p_t)
$$ (focal)

Equation {eq}`focal` has $\gamma = 2$.

\begin{align}
s_c &= \frac{n_c\,\alpha_c}{\sum_k n_k\,\alpha_k}
\end{align}
"""


@pytest.mark.slow
def test_small_book_renders_math_offline(tmp_path, chk):
    jb = Path(sys.executable).parent / "jupyter-book"
    if not jb.exists():
        pytest.skip("jupyter-book is not installed (pip install -e '.[book]')")
    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO / "_config.yml", tmp_path)
    shutil.copy(REPO / "scripts" / "local_mathjax.py", tmp_path / "scripts")
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: math\n")
    (tmp_path / "math.md").write_text(PAGE)
    r = subprocess.run([str(jb), "build", str(tmp_path), "-W", "-n", "--keep-going"],
                       capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    html = tmp_path / "_build" / "html"
    page = html / "math.html"
    text = page.read_text()
    assert 'src="_static/mathjax/tex-chtml.js"' in text
    assert "cdn.jsdelivr" not in text and "mathjax@" not in text
    assert (html / "_static" / "mathjax" / "tex-chtml.js").is_file()
    assert (html / "_static" / "mathjax" / "LICENSE").is_file()
    assert chk.check_source(page) == []

    browser = chk.chromium()
    if browser is None:
        pytest.skip("Debian's chromium is not installed: rendering not checked")
    dom = chk.dump_dom(browser, page)
    assert chk.math_count(dom) == (4, 4), chk.math_count(dom)
    problems = chk.check_page(dom, page, need_figure=False)
    assert [p for p in problems if "no table" not in p] == []
