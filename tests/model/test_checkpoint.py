"""Checkpoints: safetensors + JSON sidecar round trip, atomic writes, refusing pickles."""

import json
import os
import pickle

import pytest
import torch

from koa_core.config import Config, config_to_dict
from koa_core.errors import KoaError
from koa_core.model.checkpoint import (
    load_checkpoint,
    load_state,
    read_sidecar,
    save_checkpoint,
    save_state,
)
from koa_core.model.network import build_model


def _saved(tmp_path, dtype=None, **model_kw):
    cfg = Config()
    cfg.model.pretrained = "none"
    for k, v in model_kw.items():
        setattr(cfg.model, k, v)
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    path = save_checkpoint(tmp_path / "ckpt.safetensors", model,
                           {"config": config_to_dict(cfg), "val_metrics": {"accuracy": 0.5}},
                           dtype=dtype)
    return model, path


@pytest.mark.parametrize("model_kw", [{}, {"streams": "raw"}, {"aux_heads": False}])
def test_round_trip_same_outputs(tmp_path, model_kw):
    model, path = _saved(tmp_path, **model_kw)
    loaded, side = load_checkpoint(path)
    x = torch.randint(0, 256, (2, 2, 64, 64), dtype=torch.uint8)
    assert torch.equal(model(x)["logits"], loaded(x)["logits"])
    assert side["class_names"][4].startswith("KL4")
    assert side["config"]["model"]["streams"] == model_kw.get("streams", "dual")
    assert side["val_metrics"] == {"accuracy": 0.5}
    assert "code_version" in side
    assert sorted(os.listdir(tmp_path)) == ["ckpt.json", "ckpt.safetensors"]  # no temp files


def test_bf16_weights_load_as_float(tmp_path):
    model, path = _saved(tmp_path, dtype=torch.bfloat16)
    loaded, side = load_checkpoint(path)
    assert side["weights_dtype"] == "torch.bfloat16"
    w = loaded.head.weight
    assert w.dtype == torch.float32
    assert torch.allclose(w, model.head.weight, atol=1e-2)
    assert path.stat().st_size < 0.6 * 4 * sum(p.numel() for p in model.parameters())


def test_truncated_checkpoint(tmp_path):
    _, path = _saved(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(KoaError, match="corrupt or truncated"):
        load_checkpoint(path)


def test_corrupted_header(tmp_path):
    _, path = _saved(tmp_path)
    data = bytearray(path.read_bytes())
    data[8:40] = b"\xff" * 32
    path.write_bytes(bytes(data))
    with pytest.raises(KoaError):
        load_checkpoint(path)


class _Bomb:
    """Unpickling this would create a marker file: proof that nothing was unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_planted_pickle_is_refused_without_unpickling(tmp_path, writer):
    marker = tmp_path / "UNPICKLED"
    path = tmp_path / "evil.safetensors"
    if writer == "pickle":
        path.write_bytes(pickle.dumps(_Bomb(str(marker)), protocol=4))
    else:
        torch.save({"x": _Bomb(str(marker))}, path)
    (tmp_path / "evil.json").write_text(json.dumps({"config": {}}))
    with pytest.raises(KoaError, match="pickle"):
        load_checkpoint(path)
    assert not marker.exists()


def test_pt_suffix_refused(tmp_path):
    p = tmp_path / "model.pt"
    p.write_bytes(b"anything")
    with pytest.raises(KoaError, match="safetensors"):
        load_checkpoint(p)


def test_missing_files(tmp_path):
    with pytest.raises(KoaError, match="not found"):
        load_checkpoint(tmp_path / "none.safetensors")
    _, path = _saved(tmp_path)
    side = path.with_suffix(".json")
    side.write_text("{not json")
    with pytest.raises(KoaError) as err:
        read_sidecar(path)
    assert str(err.value).startswith(f"{side}: unreadable checkpoint sidecar (Expecting ")
    side.unlink()
    with pytest.raises(KoaError) as err:
        read_sidecar(path)
    assert str(err.value) == (f"{side}: checkpoint sidecar not found (it holds the config "
                              "and preprocessing needed to use the weights)")


def test_a_checkpoint_is_always_written_as_safetensors(tmp_path):
    torch.manual_seed(0)
    cfg = Config()
    cfg.model.pretrained = "none"
    path = save_checkpoint(tmp_path / "ckpt.pt", build_model(cfg.model),
                           {"config": config_to_dict(cfg)})
    assert path == tmp_path / "ckpt.safetensors"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.json", "ckpt.safetensors"]
    load_checkpoint(path)


def test_sidecar_mismatch(tmp_path):
    _, path = _saved(tmp_path)
    side = json.loads(path.with_suffix(".json").read_text())
    side["config"]["model"]["streams"] = "raw"  # no cross-attention/gate in that model
    path.with_suffix(".json").write_text(json.dumps(side))
    with pytest.raises(KoaError, match="do not match"):
        load_checkpoint(path)


def test_training_state_round_trip(tmp_path):
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 3,
             "best": 0.25, "history": [{"epoch": 1, "x": None}], "flag": True}
    back = load_state(save_state(tmp_path / "s.safetensors", state))
    assert back["epoch"] == 3 and back["best"] == 0.25 and back["flag"] is True
    assert back["history"] == [{"epoch": 1, "x": None}]
    opt2 = torch.optim.AdamW(torch.nn.Linear(4, 3).parameters(), lr=0.5)
    opt2.load_state_dict(back["optimizer"])  # int keys of optimizer state restored
    assert opt2.param_groups[0]["lr"] == 0.1
    s1 = opt.state_dict()["state"][0]
    s2 = opt2.state_dict()["state"][0]
    assert torch.equal(s1["exp_avg"], s2["exp_avg"])


def test_export_run_drops_local_paths(tiny_run, tmp_path):
    from koa_core.train.export import export_run

    run, root = tiny_run
    out = export_run(run, tmp_path / "pub.safetensors", dataset="synthetic phantom v1",
                     note="test export")
    side = read_sidecar(out)
    text = out.with_suffix(".json").read_text()
    assert str(root) not in text and "cache" not in str(side["config"]["data"]["cache_dir"])
    assert side["data"]["root"] == "synthetic phantom v1" and side["note"] == "test export"
    assert side["weights_dtype"] == "torch.bfloat16"
    assert side["training"]["epochs_run"] == 2
    model, _ = load_checkpoint(out)
    ref, _ = load_checkpoint(run / "best.safetensors")
    x = torch.randint(0, 256, (4, 2, 64, 64), dtype=torch.uint8)
    p_pub = torch.softmax(model(x)["logits"], 1)
    p_ref = torch.softmax(ref(x)["logits"], 1)
    assert torch.allclose(p_pub, p_ref, atol=0.05)  # bf16 rounding only


# ---------------------------------------------------------------- full disks, torn pairs
import contextlib  # noqa: E402


@contextlib.contextmanager
def _file_size_limit(nbytes):
    """Files this process writes stop at ``nbytes`` (EFBIG), as on a full disk."""
    import resource
    import signal

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)


def _model(seed):
    from koa_core.config import ModelConfig
    from koa_core.model.network import build_model

    torch.manual_seed(seed)
    return build_model(ModelConfig(pretrained="none"))


def _side():
    from koa_core.config import Config, config_to_dict

    return {"config": config_to_dict(Config())}


def test_a_write_cut_short_leaves_the_previous_checkpoint_intact(tmp_path):
    from koa_core.model.checkpoint import load_checkpoint, save_checkpoint

    path = tmp_path / "best.safetensors"
    save_checkpoint(path, _model(0), _side())
    before = {k: v.clone() for k, v in load_checkpoint(path)[0].state_dict().items()}
    with pytest.raises(KoaError) as err:
        with _file_size_limit(1_000_000):
            save_checkpoint(path, _model(1), _side())
    # the writer's own words in the one line, never "None"
    msg = str(err.value)
    assert msg.startswith(f"{path}: could not be written (") and "(None)" not in msg, msg
    assert msg.endswith("); the previous file, if any, is intact"), msg
    after = load_checkpoint(path)[0].state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.json", "best.safetensors"]


def test_a_full_disk_while_writing_the_sidecar_leaves_the_previous_pair(tmp_path, monkeypatch):
    import errno
    from pathlib import Path

    from koa_core.model.checkpoint import load_checkpoint, save_checkpoint

    path = tmp_path / "best.safetensors"
    save_checkpoint(path, _model(0), _side())
    before = (path.read_bytes(), path.with_suffix(".json").read_text())

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(KoaError) as err:
        save_checkpoint(path, _model(1), _side())
    monkeypatch.undo()
    # the OS's words, not the exception's "[Errno 28] ..." form; no temporary file is left
    assert str(err.value) == (f"{tmp_path / 'best.json'}: could not be written (No space "
                              "left on device); the previous file, if any, is intact")
    assert (path.read_bytes(), path.with_suffix(".json").read_text()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.json", "best.safetensors"]
    load_checkpoint(path)


def test_a_torn_pair_is_refused_at_load(tmp_path):
    import shutil

    from koa_core.model.checkpoint import load_checkpoint, save_checkpoint

    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_checkpoint(a, _model(0), _side())
    save_checkpoint(b, _model(1), _side())
    shutil.copyfile(b, a)  # new weights, old sidecar: a crash between the two renames
    with pytest.raises(KoaError, match="do not match their sidecar's SHA-256"):
        load_checkpoint(a)


def test_training_state_round_trips_nested_lists_and_dicts(tmp_path):
    from koa_core.model.checkpoint import load_state, save_state

    state = {"a": [torch.ones(2), {"b": torch.zeros(1), "c": [1, 2.5, None, "x"]}],
             "d": (torch.arange(3),), "e": True}
    got = load_state(save_state(tmp_path / "s.safetensors", state))
    assert torch.equal(got["a"][0], torch.ones(2)) and torch.equal(got["a"][1]["b"],
                                                                   torch.zeros(1))
    assert got["a"][1]["c"] == [1, 2.5, None, "x"] and torch.equal(got["d"][0],
                                                                   torch.arange(3))
    assert got["e"] is True
    with pytest.raises(TypeError, match="^cannot store set at s.x in a training state$"):
        save_state(tmp_path / "t.safetensors", {"x": {1, 2}})
    (tmp_path / "u.safetensors").write_bytes(b"")
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(1)}, str(tmp_path / "v.safetensors"))
    with pytest.raises(KoaError, match="v.safetensors: not a koa_core training state$"):
        load_state(tmp_path / "v.safetensors")


def test_update_sidecar_merges_keys_and_leaves_the_weights_alone(tmp_path):
    from koa_core.model.checkpoint import update_sidecar

    model, path = _saved(tmp_path)
    weights, before = path.read_bytes(), read_sidecar(path)
    update_sidecar(path, {"calibration": {"temperature": 1.5}})
    after = read_sidecar(path)
    assert path.read_bytes() == weights
    assert after == {**before, "calibration": {"temperature": 1.5}}
    assert list(after)[-1] == "weights_sha256"  # still the sidecar's last key
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.json", "ckpt.safetensors"]
    loaded, side = load_checkpoint(path)
    assert side["calibration"] == {"temperature": 1.5}


def test_update_sidecar_refuses_a_torn_pair(tmp_path):
    from koa_core.model.checkpoint import update_sidecar

    _, path = _saved(tmp_path)
    text = path.with_suffix(".json").read_text()
    data = bytearray(path.read_bytes())
    data[-1] ^= 1  # other weights than the sidecar describes
    path.write_bytes(bytes(data))
    with pytest.raises(KoaError, match="do not match their sidecar's SHA-256"):
        update_sidecar(path, {"note": "x"})
    assert path.with_suffix(".json").read_text() == text


def test_a_checkpoint_under_a_file_is_refused_in_one_line(tmp_path):
    from koa_core.model.checkpoint import save_checkpoint

    blocker = tmp_path / "file"
    blocker.write_text("x")
    target = blocker / "ckpt.safetensors"
    with pytest.raises(KoaError) as err:
        save_checkpoint(target, _model(0), _side())
    assert str(err.value) == (f"{target}: could not be written (File exists); the previous "
                              "file, if any, is intact")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_new_checkpoint_names_its_format_in_a_readable_sidecar(tmp_path):
    """New folders are made; the sidecar and the safetensors header name the format; the
    sidecar is indented JSON (one key a line) and stores paths as text, also after an
    update."""
    from safetensors import safe_open

    from koa_core.model.checkpoint import update_sidecar

    path = save_checkpoint(tmp_path / "a" / "b" / "ckpt.safetensors", _model(0),
                           {**_side(), "source": tmp_path / "run"})
    side = read_sidecar(path)
    assert side["format"] == "koa_core-checkpoint-1" and side["weights_dtype"] == "as trained"
    assert side["source"] == str(tmp_path / "run")
    with safe_open(str(path), framework="pt") as fh:
        assert fh.metadata() == {"format": "koa_core-checkpoint-1"}
    text = path.with_suffix(".json").read_text()
    assert text.startswith('{\n  "format": "koa_core-checkpoint-1",\n  "code_version": ')
    update_sidecar(path, {"origin": tmp_path})
    text = path.with_suffix(".json").read_text()
    assert text.startswith('{\n  "format": "koa_core-checkpoint-1",\n  "code_version": ')
    assert f'\n  "origin": {json.dumps(str(tmp_path))},\n  "weights_sha256": ' in text


def test_a_sidecar_from_before_the_digest_can_be_updated(tmp_path):
    from koa_core.model.checkpoint import update_sidecar

    _, path = _saved(tmp_path)
    side = read_sidecar(path)
    del side["weights_sha256"]  # as written before sidecars carried one
    path.with_suffix(".json").write_text(json.dumps(side))
    assert "weights_sha256" not in update_sidecar(path, {"note": "x"})
    assert read_sidecar(path)["note"] == "x"
    load_checkpoint(path)


def test_loading_never_asks_for_pretrained_weights(tmp_path):
    """The sidecar's config may name ImageNet weights (the run started from them); the
    loaded model holds every weight, so its config says none; a sidecar without a config
    gets the defaults, and a bad one is named in the error."""
    cfg = Config()
    cfg.model.pretrained = "imagenet"
    path = save_checkpoint(tmp_path / "ckpt.safetensors", _model(0),
                           {"config": config_to_dict(cfg)})
    model, _ = load_checkpoint(path)
    assert model.cfg.pretrained == "none"
    side = read_sidecar(path)
    del side["config"]
    path.with_suffix(".json").write_text(json.dumps(side))
    assert load_checkpoint(path)[0].cfg.streams == "dual"
    side["config"] = {"model": {"streams": "three"}}
    path.with_suffix(".json").write_text(json.dumps(side))
    with pytest.raises(KoaError) as err:
        load_checkpoint(path)
    assert str(err.value).startswith(f"{path.with_suffix('.json')}: "), str(err.value)
