#!/usr/bin/env python3
"""Check the built book the way a reader sees it: every page opened in headless Chromium.

    python scripts/check_book_html.py [_build/html] [--screenshot 04_training --out shot.png]

For each chapter (``book/notebooks/*.html``) and the landing page, Chromium loads the file
with networking off and dumps the DOM after its scripts ran. A chapter passes when it has
at least one figure (``<img>`` whose file exists) and one table, and no error output: no
"Traceback", no ``...Error`` name in a cell output, no stderr or error output cell. Exit
status 0 when every page passes, 1 otherwise (one line per problem).
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

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-quic"]
BAD_CLASSES = ("stderr", "traceback", "output_error", "cell_output_error", "output_stderr")
ERROR_NAME = re.compile(r"\b[A-Z]\w*Error\b")


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
        self._depth_in_output = 0
        self._stack: list[bool] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if tag == "img" and a.get("src"):
            self.imgs.append(a["src"])
        if tag == "table":
            self.tables += 1
        self.bad += [c for c in classes if c in BAD_CLASSES]
        is_output = "cell_output" in classes
        if tag not in ("img", "br", "hr", "meta", "link", "input"):
            self._stack.append(is_output)
            self._depth_in_output += is_output

    def handle_endtag(self, tag):
        if tag not in ("img", "br", "hr", "meta", "link", "input") and self._stack:
            self._depth_in_output -= self._stack.pop()

    def handle_data(self, data):
        if self._depth_in_output > 0:
            self.output_text.append(data)


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
    return problems


def pages(html: Path) -> list[Path]:
    return [html / "book" / "intro.html", *sorted((html / "book" / "notebooks").glob("*.html"))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("html", nargs="?", default="_build/html", help="the built book")
    ap.add_argument("--screenshot", metavar="CHAPTER", help="also screenshot this chapter")
    ap.add_argument("--out", default="book-screenshot.png", help="screenshot file")
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
    for page in found:
        issues = check_page(dump_dom(browser, page), page, need_figure=page.stem != "intro")
        problems += issues
        print(f"{'ok  ' if not issues else 'FAIL'} {page.relative_to(html)}")
    if args.screenshot:
        page = next(p for p in found if args.screenshot in p.stem)
        print(f"screenshot: {screenshot(browser, page, Path(args.out))}")
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
