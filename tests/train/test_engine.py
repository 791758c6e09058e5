"""Training engine: run folder, validation selection, resume, faults, DDP (paper §2.3-2.4)."""

import csv
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from koa_core import runtime
from koa_core.config import load_config
from koa_core.errors import KoaError
from koa_core.model import inference
from koa_core.train import engine


def _cfg(cache_dir, **extra):
    sets = [f"data.cache_dir={cache_dir}", "data.image_size=48", "data.phantom_per_class=12",
            "model.pretrained=none", "train.epochs=2", "train.batch_size=8",
            "train.warmup_epochs=1", "train.max_steps_per_epoch=3", "train.amp=off"]
    sets += [f"{k}={v}" for k, v in extra.items()]
    return load_config(None, sets)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One view cache (and so one generated phantom) for the tests that leave the
    phantom alone; a test that corrupts it makes its own."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory, cache):
    """One default two-epoch run, shared by the tests that only read it: (summary, run)."""
    out = tmp_path_factory.mktemp("plain") / "run"
    return engine.fit(_cfg(cache), out, progress=False), out


def test_fit_writes_run_folder(plain_run):
    summary, out = plain_run
    assert summary["epochs_run"] == 2
    names = set(os.listdir(out))
    assert {"config.yaml", "history.csv", "best.safetensors", "best.json",
            "last_state.safetensors"} <= names
    rows = list(csv.DictReader(open(out / "history.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for r in rows:
        assert 0 <= float(r["val_accuracy"]) <= 1 and float(r["train_loss"]) > 0
        assert 0 < float(r["val_gate_raw"]) < 1
    side = json.loads((out / "best.json").read_text())
    best_epoch = max(rows, key=lambda r: float(r["val_macro_f1"]))["epoch"]
    assert side["epoch"] == int(best_epoch)  # chosen on validation macro F1
    assert side["select_metric"] == "macro_f1"
    assert side["data"]["root"] == "synthetic phantom"
    assert side["preprocess"]["clahe_clip"] == 2.0
    assert set(side["val_metrics"]) >= {"accuracy", "macro_f1", "qwk", "per_class"}


def test_test_split_is_never_read(tmp_path):
    """Corrupt every test image: training must not notice (it never opens them)."""
    cfg = _cfg(tmp_path / "cache", **{"train.epochs": 1, "train.max_steps_per_epoch": 1})
    root = engine._phantom_root(cfg, engine.ViewCache(cfg.data.cache_dir))
    tests = list((root / "test").rglob("*.png"))
    assert tests
    for p in tests:
        p.write_bytes(b"not an image")
    engine.fit(cfg, tmp_path / "run", progress=False)


class _Interrupt(Exception):
    pass


def _final_weights(run):
    return load_file(str(run / "last_state.safetensors"))


DETERMINISTIC = {"train.deterministic": "true", "train.max_steps_per_epoch": 2}


@pytest.fixture(scope="module")
def deterministic_run(tmp_path_factory, cache):
    """An uninterrupted deterministic run in the main process (no loader workers), the
    reference of the resume and worker tests."""
    tmp = tmp_path_factory.mktemp("deterministic")
    engine.fit(_cfg(cache, **DETERMINISTIC), tmp / "run", progress=False)
    return tmp / "run"


def test_resume_after_interrupt_matches_uninterrupted(tmp_path, monkeypatch,
                                                      deterministic_run, cache):
    cfg = _cfg(cache, **DETERMINISTIC)
    full = _final_weights(deterministic_run)

    real_epoch = engine._train_epoch
    calls = {"n": 0}

    def interrupted(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 2:  # part-way into epoch 2
            raise KeyboardInterrupt
        return real_epoch(*args, **kw)

    monkeypatch.setattr(engine, "_train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        engine.fit(cfg, tmp_path / "b", progress=False)
    rows = list(csv.DictReader(open(tmp_path / "b" / "history.csv")))
    assert len(rows) == 1  # epoch 1 is saved intact
    monkeypatch.setattr(engine, "_train_epoch", real_epoch)
    with pytest.raises(KoaError, match="--resume"):
        engine.fit(cfg, tmp_path / "b", progress=False)
    engine.fit(engine.load_run_config(tmp_path / "b"), tmp_path / "b", resume=True,
               progress=False)
    resumed = _final_weights(tmp_path / "b")
    model_keys = [k for k in full if k.startswith("s.model.")]
    assert model_keys
    for k in model_keys:
        assert torch.equal(full[k], resumed[k]), k
    hist_a = list(csv.DictReader(open(deterministic_run / "history.csv")))
    hist_b = list(csv.DictReader(open(tmp_path / "b" / "history.csv")))
    assert [r["val_macro_f1"] for r in hist_a] == [r["val_macro_f1"] for r in hist_b]


def test_nan_loss_stops_with_clear_message(tmp_path, monkeypatch, cache):
    real = engine.KLMultiTaskLoss.forward

    def nan_loss(self, outputs, target):
        parts = real(self, outputs, target)
        parts["loss"] = parts["loss"] * float("nan")
        return parts

    monkeypatch.setattr(engine.KLMultiTaskLoss, "forward", nan_loss)
    with pytest.raises(KoaError, match="loss became nan"):
        engine.fit(_cfg(cache), tmp_path / "run", progress=False)


def test_unwritable_output_fails_before_training(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    called = []
    monkeypatch.setattr(engine, "prepare_data", lambda *a, **k: called.append(1))
    with pytest.raises(KoaError, match="not writable"):
        engine.fit(_cfg(tmp_path / "cache"), blocker / "run", progress=False)
    assert not called


def test_worker_processes_do_not_change_training(tmp_path, deterministic_run, cache):
    # Persistent workers prefetching the next epoch during validation, with partial epochs
    # (max_steps_per_epoch), train exactly what the main process alone trains.
    assert _cfg(tmp_path, **DETERMINISTIC).data.num_workers == 0  # the reference's
    cfg = _cfg(cache, **DETERMINISTIC, **{"data.num_workers": 2})
    engine.fit(cfg, tmp_path / "w2", progress=False)
    weights = {0: _final_weights(deterministic_run), 2: _final_weights(tmp_path / "w2")}
    for run in (deterministic_run, tmp_path / "w2"):
        rows = list(csv.DictReader(open(run / "history.csv")))
        assert len(rows) == 2 and all(float(r["data_wait_s"]) >= 0 for r in rows)
    keys = [k for k in weights[0] if k.startswith("s.model.")]
    assert keys and all(torch.equal(weights[0][k], weights[2][k]) for k in keys)


@pytest.mark.slow
def test_compiled_training_writes_the_same_kind_of_run(tmp_path, plain_run, monkeypatch, cache):
    """train.compile goes through torch.compile (TorchDynamo captures the forward). The
    backend here is eager: inductor's code generation for a CPU takes a minute cold on 2
    cores and is not what a GPU run compiles to; the wrapper's effects on the run
    (parameter names, files) are the same."""
    compiled = []
    real = torch.compile

    def eager(model, **kw):
        compiled.append(type(model).__name__)
        return real(model, **{**kw, "backend": "eager"})

    monkeypatch.setattr(torch, "compile", eager)
    cfg = _cfg(cache, **{"train.compile": "true", "train.epochs": 1,
                                      "train.max_steps_per_epoch": 2})
    summary = engine.fit(cfg, tmp_path / "c", progress=False)
    assert summary["epochs_run"] == 1
    w = _final_weights(tmp_path / "c")
    assert compiled  # the run went through torch.compile
    assert not any("_orig_mod" in k for k in w)  # plain parameter names, loadable anywhere
    assert set(_final_weights(plain_run[1])) == set(w)  # the same names as an eager run


def test_resume_without_run(tmp_path):
    with pytest.raises(KoaError, match="nothing to resume"):
        engine.fit(_cfg(tmp_path / "cache"), tmp_path / "empty", resume=True, progress=False)


@pytest.mark.parametrize("mode,device,expected", [
    ("off", "cpu", None), ("bf16", "cpu", torch.bfloat16), ("bf16", "cuda", torch.bfloat16)])
def test_amp_dtype(mode, device, expected):
    assert runtime.amp_dtype(mode, torch.device(device)) == expected


def test_amp_dtype_bad_mode():
    with pytest.raises(KoaError):
        runtime.amp_dtype("fp8", torch.device("cpu"))


def test_lr_schedule_warmup_then_cosine():
    f = engine._lr_lambda(total_steps=100, warmup_steps=10)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(55) == pytest.approx(0.5)
    assert f(100) == pytest.approx(0.0, abs=1e-9)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(tmp_path):
    """Two ranks of the same `koa train` command, each with the environment torchrun gives
    its workers (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT), train with DDP over gloo;
    rank 0 alone writes the run and reports. The ranks are fresh interpreters: a rank forked
    from this process would inherit whatever autograd state earlier tests left in it
    (autograd refuses to run in a child forked after its worker threads started)."""
    cache = tmp_path / "cache"
    out = tmp_path / "ddp"
    argv = ["train", "--quiet", "--out", str(out)]
    for s in [f"data.cache_dir={cache}", "data.image_size=48", "data.phantom_per_class=6",
              "model.pretrained=none", "train.epochs=1", "train.batch_size=4",
              "train.max_steps_per_epoch=1", "train.amp=off", "train.warmup_epochs=1"]:
        argv += ["--set", s]
    env = {"OMP_NUM_THREADS": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    code = ("import sys; from koa_core.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    logs = [tmp_path / f"rank{r}.log" for r in (0, 1)]
    ranks = []
    for r in (0, 1):
        with open(logs[r], "w") as log:
            ranks.append(subprocess.Popen(
                [sys.executable, "-c", code, *argv], stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, **env, "RANK": str(r), "LOCAL_RANK": str(r)}))
    try:
        for p in ranks:
            p.wait(timeout=300)
    finally:
        for p in ranks:
            if p.poll() is None:
                p.kill()
                p.wait()
    text = [log.read_text() for log in logs]
    assert [p.returncode for p in ranks] == [0, 0], [t[-2000:] for t in text]
    assert text[0].count("done: 1 epoch(s)") == 1, text  # rank 0 alone reports
    assert "done:" not in text[1], text[1]
    assert int(os.environ.get("RANK", "0")) == 0 and "WORLD_SIZE" not in os.environ
    rows = list(csv.DictReader(open(out / "history.csv")))
    assert len(rows) == 1
    assert (out / "best.safetensors").exists()


def test_selection_follows_validation_macro_f1(tmp_path, monkeypatch, cache):
    """Scripted validation macro F1 .2, .6, .4, .3 with patience 2: training stops after
    epoch 4, and best.json, its weights and its metrics are epoch 2's."""
    from safetensors.torch import load_file

    scripted = iter([0.2, 0.6, 0.4, 0.3, 0.9, 0.9])
    snapshots = []
    real = engine._validate

    def fake(model, views, grades, cfg, device, dtype):
        out = real(model, views, grades, cfg, device, dtype)
        out["val_macro_f1"] = next(scripted)
        snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return out

    monkeypatch.setattr(engine, "_validate", fake)
    cfg = _cfg(cache, **{"train.epochs": 6, "train.patience": 2,
                                      "train.max_steps_per_epoch": 1})
    out = tmp_path / "run"
    summary = engine.fit(cfg, out, progress=False)
    assert summary["epochs_run"] == 4
    side = json.loads((out / "best.json").read_text())
    assert side["epoch"] == 2
    data = engine.prepare_data(cfg)
    assert side["val_metrics"]["n"] == len(data.val) == sum(side["data"]["val_counts"])
    best = load_file(str(out / "best.safetensors"))
    for k, v in snapshots[1].items():
        assert torch.equal(best[k], v), k
    assert any(not torch.equal(best[k], v) for k, v in snapshots[3].items())


def test_fixed_length_training_scores_its_last_epoch(tmp_path, monkeypatch, cache):
    """select_metric last: the same falling scores train every epoch (no early stop) and
    the checkpoint, best.json and its metrics are the last epoch's."""
    scripted = iter([0.6, 0.4, 0.3])
    real = engine._validate

    def fake(model, views, grades, cfg, device, dtype):
        out = real(model, views, grades, cfg, device, dtype)
        out["val_macro_f1"] = next(scripted)
        return out

    monkeypatch.setattr(engine, "_validate", fake)
    cfg = _cfg(cache, **{"train.epochs": 3, "train.patience": 1,
                         "train.select_metric": "last", "train.max_steps_per_epoch": 1})
    summary = engine.fit(cfg, tmp_path / "run", progress=False)
    assert summary["epochs_run"] == 3
    side = json.loads((tmp_path / "run" / "best.json").read_text())
    assert side["epoch"] == 3 and side["select_metric"] == "last"


@pytest.mark.parametrize("keep_state", [True, False])
def test_best_checkpoint_reproduces_its_validation_metrics(tmp_path, keep_state, plain_run, cache):
    """best.safetensors re-evaluated on the validation split gives best.json's confusion
    matrix (whether it was written at once or held in memory until the end)."""
    from koa_core.metrics.classification import classification_metrics
    from koa_core.model.checkpoint import load_checkpoint

    cfg = _cfg(cache, **{"train.max_steps_per_epoch": 1})
    out = tmp_path / "run"
    if keep_state:  # the default: the shared plain run
        cfg, out = _cfg(cache), plain_run[1]
    else:
        engine.fit(cfg, out, progress=False, keep_state=False)
    assert (out / "last_state.safetensors").exists() == keep_state
    side = json.loads((out / "best.json").read_text())
    model, _ = load_checkpoint(out / "best.safetensors")
    data = engine.prepare_data(cfg)
    probs, _ = inference.predict_views(model, data.val.views)
    m = classification_metrics(data.val.grades, probs.argmax(1), n_boot=0)
    assert m["confusion_matrix"] == side["val_metrics"]["confusion_matrix"]


def test_ema_run_validates_selects_and_saves_the_averaged_weights(tmp_path, cache):
    """With train.ema_decay the checkpoint holds the average, not the last step's weights."""
    from koa_core.model.checkpoint import load_state

    out = tmp_path / "run"
    cfg = _cfg(cache, **{"train.epochs": 1, "train.ema_decay": 0.5})
    engine.fit(cfg, out, progress=False)
    best = load_file(out / "best.safetensors")
    state = load_state(out / "last_state.safetensors")
    key = "trunk.conv1.weight" if "trunk.conv1.weight" in best else sorted(
        k for k in best if k.endswith("conv1.weight"))[0]
    assert torch.equal(best[key].float(), state["ema"][key].float())
    assert not torch.equal(best[key].float(), state["model"][key].float())
    # ... and the validation figures of epoch 1 are the average's
    rows = list(csv.DictReader(open(out / "history.csv")))
    side = json.loads((out / "best.json").read_text())
    assert side["val_metrics"]["macro_f1"] == pytest.approx(float(rows[0]["val_macro_f1"]))


def test_predict_views_flip_tta_is_the_mean_over_the_mirror():
    from koa_core.config import ModelConfig
    from koa_core.model.network import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(pretrained="none")).eval()
    views = torch.randint(0, 255, (6, 2, 64, 64), dtype=torch.uint8)
    p, g = inference.predict_views(model, views, batch_size=4)
    pm, gm = inference.predict_views(model, views.flip(-1), batch_size=4)
    pt, gt = inference.predict_views(model, views, batch_size=4, tta="flip")
    assert abs(pt - (p + pm) / 2).max() < 1e-5 and abs(gt - (g + gm) / 2).max() < 1e-5
    assert abs(p - pm).max() > 1e-4  # the mirror is a different input
    with pytest.raises(KoaError, match="tta"):
        inference.predict_views(model, views, tta="rot90")


def test_build_loss_scales_alpha_to_mean_one_over_training_labels(tmp_path):
    counts = [50, 20, 30, 15, 5]
    cfg = _cfg(tmp_path / "cache", **{"loss.alpha_norm": "mean1"})
    a = engine.build_loss(cfg, counts).alpha
    assert float((a * torch.tensor(counts, dtype=torch.float32)).sum() / sum(counts)) \
        == pytest.approx(1.0)
    assert torch.equal(engine.build_loss(_cfg(tmp_path / "cache"), counts).alpha,
                       torch.tensor(load_config(None).loss.alpha, dtype=torch.float32))
    with pytest.raises(KoaError, match="alpha_norm"):
        engine.build_loss(_cfg(tmp_path / "cache", **{"loss.alpha_norm": "max"}), counts)
