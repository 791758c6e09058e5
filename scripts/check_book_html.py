#!/usr/bin/env python3
r"""Check the built book the way a reader sees it: every page opened in headless Chromium.

    python scripts/check_book_html.py [_build/html] [--screenshot 04_training --out shot.png]
                                      [--expect-math 03_loss]

For each chapter (``book/notebooks/*.html``) and the landing page, Chromium loads the file
with networking off and dumps the DOM after its scripts ran. A chapter passes when it has
at least one figure (``<img>`` whose file exists) and one table, and no error output: no
"Traceback", no ``...Error`` name in a cell output, no stderr or error output cell.

Every page must also be readable offline: each ``<script src>`` is a file of the book (no
``http(s)://`` or ``//`` script, so no MathJax from a CDN) and exists, and every formula
(Sphinx writes ``<span class="math">`` / ``<div class="math">``) was typeset by the book's
own MathJax: one ``<mjx-container>`` per formula, no TeX error (``<mjx-merror>``), and no
raw TeX (``\(``, ``\[``, ``$$``, ``$x^2$``) left in the text outside code. The number of
formulas rendered is printed per page. Exit status 0 when every page passes, 1 otherwise
(one line per problem).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-quic",
         # No name resolves, so nothing can come from a network (file:// pages still load);
         # the virtual time budget lets MathJax finish typesetting before the DOM is dumped.
         "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=5000"]
BAD_CLASSES = ("stderr", "traceback", "output_error", "cell_output_error", "output_stderr")
ERROR_NAME = re.compile(r"\b[A-Z]\w*Error\b")
# TeX that MathJax should have replaced: \( \) \[ \] delimiters, $$, or $...$ holding TeX.
RAW_TEX = re.compile(r"\\[()\[\]]|\$\$|\$[^$\s][^$]*?[\\^_{}][^$]*?\$")
REMOTE = re.compile(r"^\s*(?!file:)(?:[a-z][a-z0-9+.-]*:)?//", re.I)  # http(s)://, //host
NO_TEXT = ("pre", "code", "script", "style", "textarea", "kbd", "samp")


def chromium() -> str | None:
    """Path of Debian's chromium (or a Chrome-like browser), None if there is none."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def _run(browser: str, args: list[str], timeout: int = 120) -> str:
    with tempfile.TemporaryDirectory(prefix="koa-chromium-") as profile:
        r = subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", *args],
                           capture_output=True, text=True, timeout=timeout, check=False)
    return r.stdout


def dump_dom(browser: str, page: Path) -> str:
    """The DOM of a page after Chromium ran its scripts."""
    return _run(browser, ["--dump-dom", page.resolve().as_uri()])


def screenshot(browser: str, page: Path, out: Path, size: str = "1280,2200") -> Path:
    _run(browser, [f"--screenshot={out.resolve()}", f"--window-size={size}",
                   "--hide-scrollbars", page.resolve().as_uri()])
    return out


class _Scan(HTMLParser):
    """Collects images, tables, bad output classes and the text inside cell outputs."""

    def __init__(self):
        super().__init__()
        self.imgs, self.tables, self.bad, self.output_text = [], 0, [], []
        self.scripts: list[str] = []       # every <script src>
        self.script_text: list[str] = []   # inline script bodies
        self.math = self.mjx = self.mjx_errors = 0
        self.text: list[str] = []          # prose: text outside code, scripts and styles
        self._depth_in_output = 0
        self._no_text = 0
        self._stack: list[bool] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if tag == "img" and a.get("src"):
            self.imgs.append(a["src"])
        if tag == "table":
            self.tables += 1
        if tag == "script" and a.get("src"):
            self.scripts.append(a["src"])
        if tag in ("span", "div") and "math" in classes:
            self.math += 1
        self.mjx += tag == "mjx-container"
        self.mjx_errors += tag == "mjx-merror" or "data-mjx-error" in a
        self._no_text += tag in NO_TEXT
        self.bad += [c for c in classes if c in BAD_CLASSES]
        is_output = "cell_output" in classes
        if tag not in ("img", "br", "hr", "meta", "link", "input"):
            self._stack.append(is_output)
            self._depth_in_output += is_output

    def handle_endtag(self, tag):
        if tag in NO_TEXT and self._no_text:
            self._no_text -= 1
        if tag not in ("img", "br", "hr", "meta", "link", "input") and self._stack:
            self._depth_in_output -= self._stack.pop()

    def handle_data(self, data):
        if self._depth_in_output > 0:
            self.output_text.append(data)
        if self.lasttag == "script" and self._no_text:
            self.script_text.append(data)
        if not self._no_text:
            self.text.append(data)


def script_problems(s: _Scan, page: Path) -> list[str]:
    """External scripts (a CDN's MathJax above all) and local scripts whose file is missing."""
    problems = []
    for src in s.scripts:
        if REMOTE.match(src):
            problems.append(f"{page.name}: external script {src} (the book must serve its "
                            "own scripts, MathJax included)")
            continue
        parts = urlsplit(src)
        if parts.scheme == "file":
            path = Path(unquote(parts.path))
        elif parts.scheme or not parts.path:
            continue                                   # data:, blob: ...
        else:
            path = page.parent / unquote(parts.path)
        if not path.exists():
            problems.append(f"{page.name}: script file missing: {src}")
    for body in s.script_text:
        for url in re.findall(r"(?:https?:)?//[^\s\"'`]*mathjax[^\s\"'`]*", body, re.I):
            problems.append(f"{page.name}: an inline script loads MathJax from {url}")
    return problems


def math_problems(s: _Scan, page: Path) -> list[str]:
    """Formulas MathJax did not typeset, TeX errors, and raw TeX left in the prose."""
    problems = []
    if s.math and s.mjx < s.math:
        problems.append(f"{page.name}: MathJax rendered {s.mjx} of {s.math} formula(s) "
                        "(is _static/mathjax/ in the build? see scripts/local_mathjax.py)")
    if s.mjx_errors:
        problems.append(f"{page.name}: {s.mjx_errors} TeX error(s) in formulas (mjx-merror)")
    raw = sorted({m.group(0)[:40] for m in RAW_TEX.finditer(" ".join(s.text))})
    if raw:
        problems.append(f"{page.name}: raw TeX not rendered: {', '.join(raw[:5])}")
    return problems


def math_count(dom: str) -> tuple[int, int]:
    """``(formulas, rendered)`` of a page: Sphinx's math elements, MathJax's containers."""
    s = _Scan()
    s.feed(dom)
    return s.math, s.mjx


def check_page(dom: str, page: Path, need_figure: bool = True) -> list[str]:
    """Problems found in one page's DOM (an empty list when it is fine)."""
    if "<body" not in dom:
        return [f"{page.name}: Chromium returned no DOM"]
    s = _Scan()
    s.feed(dom)
    problems = []
    local = [src for src in s.imgs if not src.startswith(("data:", "http"))]
    missing = [src for src in local if not (page.parent / src.split("?")[0]).exists()]
    if need_figure and not local:
        problems.append(f"{page.name}: no figure (<img>)")
    problems += [f"{page.name}: image file missing: {m}" for m in missing]
    if not s.tables:
        problems.append(f"{page.name}: no table")
    if "Traceback" in dom:
        problems.append(f"{page.name}: a Traceback is shown")
    if s.bad:
        problems.append(f"{page.name}: error/stderr output cells ({', '.join(sorted(set(s.bad)))})")
    names = sorted(set(ERROR_NAME.findall(" ".join(s.output_text))))
    if names:
        problems.append(f"{page.name}: error names in cell outputs: {', '.join(names)}")
    problems += script_problems(s, page)
    problems += math_problems(s, page)
    return problems


def check_source(page: Path) -> list[str]:
    """The page's HTML file as written by Sphinx (before any script ran): its scripts."""
    s = _Scan()
    s.feed(page.read_text(encoding="utf-8", errors="replace"))
    return script_problems(s, page)


def pages(html: Path) -> list[Path]:
    return [html / "book" / "intro.html", *sorted((html / "book" / "notebooks").glob("*.html"))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("html", nargs="?", default="_build/html", help="the built book")
    ap.add_argument("--screenshot", metavar="CHAPTER", help="also screenshot this chapter")
    ap.add_argument("--out", default="book-screenshot.png", help="screenshot file")
    ap.add_argument("--expect-math", metavar="CHAPTER", action="append", default=[],
                    help="fail unless this page has formulas, all rendered (repeatable)")
    ap.add_argument("--forbid", metavar="TEXT", action="append", default=[],
                    help="fail a page whose text holds TEXT, e.g. the demo book's footer in "
                         "the published book (repeatable)")
    args = ap.parse_args(argv)
    browser = chromium()
    if browser is None:
        print("check_book_html: chromium not found (Debian: apt-get install chromium)")
        return 1
    html = Path(args.html)
    found = pages(html)
    if len(found) < 2 or not found[0].exists():
        print(f"check_book_html: no built book in {html} (run `make book` first)")
        return 1
    problems = []
    rendered = 0
    for page in found:
        dom = dump_dom(browser, page)
        issues = check_source(page)
        issues += [i for i in check_page(dom, page, need_figure=page.stem != "intro")
                   if i not in issues]
        issues += [f"{page.name}: holds forbidden text {t!r}" for t in args.forbid
                   if t in dom]
        n_math, n_mjx = math_count(dom)
        rendered += n_mjx
        if not n_math and any(e in page.stem for e in args.expect_math):
            issues.append(f"{page.name}: no formula, but --expect-math names this page")
        problems += issues
        math = f" (math: {n_mjx} of {n_math} formula(s) rendered)" if n_math else ""
        print(f"{'ok  ' if not issues else 'FAIL'} {page.relative_to(html)}{math}")
    missing = [e for e in args.expect_math if not any(e in p.stem for p in found)]
    problems += [f"--expect-math {e}: no such page" for e in missing]
    print(f"MathJax: {rendered} formula(s) rendered in {len(found)} page(s)")
    if args.screenshot:
        page = next(p for p in found if args.screenshot in p.stem)
        print(f"screenshot: {screenshot(browser, page, Path(args.out))}")
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
