"""koa bench: every figure is produced and positive; the table prints them (no speed goals)."""

import json
import math

import pytest

from koa_core.bench import format_table, run_benchmarks
from koa_core.cli import main


def _positive(x):
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_run_benchmarks_small(phantom_root):
    r = run_benchmarks(str(phantom_root), n_images=8, size=32, batch=4, steps=1, workers=0,
                       fed_steps=1)
    p = r["pipeline"]
    assert r["pipeline_images"] == 8
    for k in ("baseline_img_s", "cache_build_img_s", "cached_img_s", "cache_reload_s"):
        assert _positive(p[k]), k
    assert set(r["model"]) == {"fp32", "fp32+channels_last", "bf16+channels_last"}
    for m in r["model"].values():
        assert _positive(m["train_img_s"]) and _positive(m["infer_img_s"])
        assert m["peak_mem_mb"] > 10 and m["gpu_util"] is None  # CPU: no GPU figure
    rf = r["roofline"]
    assert rf["gflop_per_image"] > 0.1 and rf["matmul_gflops"] > 0.1
    assert rf["infer_ceiling_img_s"] == pytest.approx(
        rf["matmul_gflops"] / rf["gflop_per_image"])
    fed = r["loader_fed"]
    assert _positive(fed["train_img_s"]) and _positive(fed["over_device_tensors"])
    table = format_table(r)
    assert "baseline" in table and "bf16+channels_last" in table
    assert "fed by the cached pipeline" in table and "inference ceiling" in table


def test_cli_bench_saves_json(tmp_path, phantom_root, capsys):
    out = tmp_path / "b.json"
    rc = main(["bench", "--data", str(phantom_root), "--images", "8", "--size", "32",
               "--batch", "4", "--steps", "1", "--workers", "0", "--skip-model",
               "--save", str(out)])
    assert rc == 0
    saved = json.loads(out.read_text())
    assert saved["pipeline_images"] == 8 and "model" not in saved
    assert "input pipeline (8 images at 32 px" in capsys.readouterr().out


def test_bomb_png_declares_its_size_in_a_small_file(tmp_path):
    """The --bomb benchmark's input: a valid PNG whose header declares far more pixels than
    its size suggests (its memory figures are the benchmark's, not a test's)."""
    from PIL import Image

    from koa_core.bench import format_bomb, write_png_bomb

    path = write_png_bomb(tmp_path / "b.png", 30_000, 30_000)
    assert path.stat().st_size < 200_000
    old, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # Pillow's own bomb check
    try:
        with Image.open(path) as im:  # the header only
            assert im.size == (30_000, 30_000) and im.format == "PNG"
    finally:
        Image.MAX_IMAGE_PIXELS = old
    table = format_bomb({"bombs": {"x": {"file_kb": 1, "koa_read_image_mb": 2,
                                         "opencv_decode_mb": 3, "imports_only_mb": 1}},
                         "goal_mb": 1024, "met": True})
    assert "under 1024 MB" in table and "yes" in table
