"""Benchmark of the book's in-browser grader ("Grade your own knee", book/grade.md).

    python scripts/bench_grader.py [--html _build/html] [--out results/bench-grader.json]
                                   [--screenshot shot.png]

Measures, and writes as JSON with the machine named (CPU model, cores, Chromium):

- sizes: the page's model and onnxruntime-web's files (the page's budget is 40 MB), and
  the model at each precision the page could ship (float32, float16-stored, int8 weights)
  with its agreement with the float32 export on the book's 50 sample knees (ONNX Runtime
  on the CPU, Python preprocessing): how the page's precision was chosen;
- timings in headless Chromium (Debian's, no cache, one WebAssembly thread): the model
  ready, and the first grade after a click on a sample knee as soon as it is, both from the
  page's navigation start; then each further knee;
- agreement of the page's own grades with ``koa predict`` (ONNX Runtime float32) on the 50
  knees, and of the page's preprocessing with the Python (cv2) one, pixel by pixel.

Without ``--html`` the grader page is built alone into a temporary folder.
"""

from __future__ import annotations

import argparse
import base64
import functools
import http.server
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from koa_core.book.grader import (
    JS_FILES,
    agreement,
    build_standalone,
    fp32_export,
    sample_files,
    write_model,
)
from koa_core.data.imaging import read_gray
from koa_core.data.preprocess import Preprocessor
from koa_core.runtime import provenance

CHROMIUM = "/usr/bin/chromium"


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "platform": platform.platform()}


def precisions(tmp: Path) -> dict:
    """Each precision's file size and agreement with float32 on the sample knees."""
    paths = [s["path"] for s in sample_files()]
    ref, out = fp32_export(), {}
    for p in ("fp32", "fp16", "int8"):
        f = write_model(tmp / f"{p}.onnx", p)
        out[p] = {"megabytes": round(f.stat().st_size / 1e6, 2), **agreement(f, ref, paths)}
    return out


def _open(browser, url: str):
    ctx = browser.new_context()  # a fresh profile: nothing cached
    page = ctx.new_page()
    page.route("**/favicon.ico", lambda route: route.fulfill(status=204))
    page.goto(url)
    page.wait_for_function("window.koaGrader !== undefined && window.koaGrader.timings.ready",
                           timeout=60_000, polling=20)
    return ctx, page


def cold_loads(browser, url: str, n: int = 3) -> list[dict]:
    """Model ready and first grade (a click on the first sample knee as soon as the page is
    ready), in ms from the navigation start, on ``n`` fresh loads."""
    out = []
    for _ in range(n):
        ctx, page = _open(browser, url)
        page.locator(".kg-sample").first.click()
        page.wait_for_function("window.koaGrader.timings.first", timeout=60_000, polling=20)
        t = page.evaluate("({...window.koaGrader.timings})")
        out.append({"ready_ms": round(t["ready"]), "first_grade_ms": round(t["first"])})
        ctx.close()
    return out


def grade_all(page) -> list[dict]:
    files = [s["file"] for s in page.evaluate("window.koaGrader.config()")["samples"]]
    return page.evaluate("""async (files) => {
        const out = [];
        for (const f of files) out.push(await window.koaGrader.gradeUrl('../grader/' + f));
        return out; }""", files)


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, np.uint8).tobytes()).decode()


def pixels(page) -> dict:
    """The page's views of the sample knees against the Python preprocessing."""
    pre = Preprocessor.from_sidecar({"preprocess": page.evaluate(
        "window.koaGrader.config().preprocess")})
    diffs = []
    for s in sample_files():
        img = read_gray(s["path"])
        js = page.evaluate("([t, w, h]) => window.koaGrader.views(t, w, h)",
                           [_b64(img), img.shape[1], img.shape[0]])
        t = pre.transform_input(img)
        for name, want in zip(("transformed", "raw", "clahe"), (t, *pre.paper_views(t))):
            got = np.frombuffer(base64.b64decode(js[name]), np.uint8).reshape(want.shape)
            diffs.append(np.abs(got.astype(int) - want).ravel())
    d = np.concatenate(diffs)
    return {"pixels": int(d.size), "identical": float((d == 0).mean()),
            "within_one_level": float((d <= 1).mean()), "max_difference": int(d.max())}


def browser_agreement(got: list[dict]) -> dict:
    from koa_core.infer.predict import predict_files

    ref = predict_files([str(s["path"]) for s in sample_files()], engine="onnxruntime")
    p = np.array([g["probabilities"] for g in got])
    r = np.array([x.probabilities for x in ref])
    gates = np.abs(np.array([g["gate"] for g in got]) - np.array([x.gate for x in ref]))
    return {"reference": "koa predict --engine onnxruntime (float32)", "knees": len(got),
            "same_grade": int(sum(g["grade"] == x.grade for g, x in zip(got, ref))),
            "max_probability_difference": float(np.abs(p - r).max()),
            "max_gate_difference": float(gates.max()),
            "same_input_flags": int(sum(g["flags"] == x.input_flags for g, x in zip(got, ref)))}


def site_sizes(site: Path) -> dict:
    g = site / "grader"
    model = (g / "model.onnx").stat().st_size / 1e6
    runtime = sum(f.stat().st_size for f in (g / "ort").iterdir()) / 1e6
    code = sum((g / f).stat().st_size for f in JS_FILES + ("grader.json",)) / 1e6
    return {"model_mb": round(model, 2), "runtime_mb": round(runtime, 2),
            "code_and_config_mb": round(code, 3), "total_mb": round(model + runtime + code, 2)}


def run(site: Path, screenshot: str | None) -> dict:
    from playwright.sync_api import sync_playwright

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/book/grade.html"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        loads = cold_loads(browser, url)
        ctx, page = _open(browser, url)
        got = grade_all(page)
        further = [g["ms"] for g in got[1:]]
        if screenshot:
            page.locator(".kg-sample").nth(25).click()
            page.wait_for_selector(".kg-grade")
            page.screenshot(path=screenshot, full_page=True)
        result = {"chromium": browser.version, "cold_loads": loads,
                  "further_knee_ms": {"knees": len(further),
                                      "median": round(float(np.median(further))),
                                      "max": round(float(np.max(further)))},
                  "agreement": browser_agreement(got), "preprocessing": pixels(page)}
        ctx.close()
        browser.close()
    server.shutdown()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--html", help="a built book's HTML folder (default: build the page alone)")
    ap.add_argument("--out", default="results/bench-grader.json")
    ap.add_argument("--screenshot", help="save the page after grading a sample knee here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(args.html) if args.html else build_standalone(Path(tmp) / "site",
                                                                  measure=True).parents[1]
        t0 = time.time()
        out = {"benchmark": "the book's in-browser grader (scripts/bench_grader.py)",
               "machine": machine(), "sizes": site_sizes(site),
               "page": json.loads((site / "grader" / "grader.json").read_text())["model"],
               "precisions": precisions(Path(tmp)), **run(site, args.screenshot)}
        out["page"].pop("file", None)
        out["seconds"] = round(time.time() - t0, 1)
    out["provenance"] = {**provenance("python scripts/bench_grader.py "
                                      + " ".join(sys.argv[1:])),
                         "data": "book/sample: 50 validation knees, the original crops"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
