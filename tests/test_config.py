"""Tests for koa_core.config: paper defaults, YAML then --set precedence, value parsing,
errors, dict round trip."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from koa_core import config as config_module
from koa_core.config import (
    PAPER_ALPHA,
    Config,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
)
from koa_core.errors import KoaError


@pytest.mark.parametrize("section, key, paper_value", [
    ("preprocess", "clahe_clip", 2.0),  # §2.3: beta = 2.0
    ("preprocess", "crop", True),  # §2.2 central crop
    ("loss", "gamma", 2.0),  # §2.3b
    ("loss", "alpha", PAPER_ALPHA),  # Table 2
    ("model", "dropout", 0.4),  # §2.3
    ("model", "streams", "dual"),  # §2.4
    ("model", "cross_attention", True),  # §2.4b
    ("model", "fusion", "gated"),  # §2.4c
    ("model", "num_classes", 5),
    ("data", "image_size", 224),  # §2.1-2.2
    ("augment", "enabled", True),
    ("augment", "class_specific", True),  # §2.3a
    ("train", "select_metric", "macro_f1"),
])
def test_defaults_are_the_papers(section, key, paper_value):
    assert getattr(getattr(Config(), section), key) == paper_value
    assert getattr(getattr(load_config(), section), key) == paper_value


def test_paper_alpha_is_table2():
    assert PAPER_ALPHA == (0.133, 0.267, 0.133, 0.133, 0.333)
    assert len(PAPER_ALPHA) == 5
    assert sum(PAPER_ALPHA) == pytest.approx(0.999, abs=1e-9)


def test_default_instances_are_independent():
    a, b = Config(), Config()
    a.train.epochs = 1
    assert b.train.epochs == Config().train.epochs != 1


def _yaml(tmp_path, data, name="profile.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return p


def test_yaml_then_set_precedence(tmp_path):
    p = _yaml(tmp_path, {"train": {"epochs": 7, "batch_size": 8},
                         "model": {"dropout": 0.1}})
    cfg = load_config(p, ["train.epochs=3", "model.fusion=mean"])
    assert cfg.train.epochs == 3  # --set beats YAML
    assert cfg.train.batch_size == 8  # YAML beats default
    assert cfg.model.dropout == 0.1
    assert cfg.model.fusion == "mean"  # --set beats default
    assert cfg.loss.gamma == 2.0  # untouched default
    # the later of two --set wins
    assert load_config(p, ["train.epochs=3", "train.epochs=4"]).train.epochs == 4


def test_yaml_accepts_str_path_and_empty_file(tmp_path):
    p = _yaml(tmp_path, "")
    assert config_to_dict(load_config(str(p))) == config_to_dict(Config())
    p2 = _yaml(tmp_path, "train:\n", "nullsection.yaml")  # an empty section is allowed
    assert load_config(p2).train.epochs == Config().train.epochs


@pytest.mark.parametrize("item, section, key, value", [
    ("train.epochs=5", "train", "epochs", 5),
    ("train.lr=0.001", "train", "lr", 0.001),
    ("model.dropout=0.5", "model", "dropout", 0.5),
    ("model.cross_attention=false", "model", "cross_attention", False),
    ("train.deterministic=true", "train", "deterministic", True),
    ("train.max_steps_per_epoch=null", "train", "max_steps_per_epoch", None),
    ("data.subset=~", "data", "subset", None),
    ("loss.alpha=[0.2, 0.2, 0.2, 0.2, 0.2]", "loss", "alpha", [0.2] * 5),
    ("loss.alpha=uniform", "loss", "alpha", "uniform"),
    ("model.fusion=mean", "model", "fusion", "mean"),
    ("data.root=/some/where=odd", "data", "root", "/some/where=odd"),  # split on first '='
    (" train.epochs = 6", "train", "epochs", 6),  # whitespace around names and value
    ("model.pretrained=none", "model", "pretrained", "none"),
])
def test_set_value_parsing(item, section, key, value):
    cfg = apply_overrides(Config(), [item])
    got = getattr(getattr(cfg, section), key)
    assert got == value
    assert type(got) is type(value)


def test_set_float_in_exponent_notation():
    cfg = apply_overrides(Config(), ["train.lr=1e-3", "train.weight_decay=5e-5"])
    assert cfg.train.lr == pytest.approx(1e-3) and isinstance(cfg.train.lr, float)
    assert isinstance(cfg.train.weight_decay, float)


def test_set_amp_off_stays_a_string():
    assert apply_overrides(Config(), ["train.amp=off"]).train.amp == "off"


@pytest.mark.parametrize("item", [
    "train.epochs",  # no '='
    "epochs=5",  # no section
    "=5",
    "",
])
def test_malformed_set_raises(item):
    with pytest.raises(KoaError, match="section.key=value"):
        apply_overrides(Config(), [item])


@pytest.mark.parametrize("item, fragment", [
    ("nosuch.epochs=5", "unknown config section 'nosuch'"),
    ("train.nosuch=5", "unknown key train.nosuch"),
    ("train.epochs.x=5", "unknown key train.epochs.x"),
    (".epochs=5", "unknown config section ''"),
    ("train.=5", "unknown key train."),
])
def test_unknown_set_target_raises(item, fragment):
    with pytest.raises(KoaError) as ei:
        apply_overrides(Config(), [item])
    assert fragment in str(ei.value)
    assert "known:" in str(ei.value)  # tells the user what is allowed


@pytest.mark.parametrize("text, fragment", [
    ("nosuch:\n  x: 1\n", "unknown config section"),
    ("train:\n  nosuch: 1\n", "unknown key train.nosuch"),
    ("- 1\n- 2\n", "expected a mapping of sections"),
    ("train: [1, 2]\n", "must be a mapping"),
    ("train: {epochs: [1,\n", "not valid YAML"),
])
def test_bad_yaml_raises(tmp_path, text, fragment):
    p = _yaml(tmp_path, text)
    with pytest.raises(KoaError) as ei:
        load_config(p)
    assert fragment in str(ei.value)
    assert str(p) in str(ei.value)  # names the file
    assert "\n" not in str(ei.value)


def test_missing_file_raises(tmp_path):
    with pytest.raises(KoaError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(KoaError, match="config file not found: no-such-profile"):
        load_config("no-such-profile")


def test_directory_as_config_is_koa_error(tmp_path):
    with pytest.raises(KoaError, match="cannot read") as ei:
        load_config(tmp_path)
    assert str(tmp_path) in str(ei.value)


def test_binary_config_is_koa_error(tmp_path):
    p = tmp_path / "binary.yaml"
    p.write_bytes(b"\xff\xfe\x00\x01train")
    with pytest.raises(KoaError):
        load_config(p)


def test_stacked_yaml_files_later_wins(tmp_path):
    a = _yaml(tmp_path, {"train": {"epochs": 7, "batch_size": 8}, "model": {"dropout": 0.2}},
              "a.yaml")
    b = _yaml(tmp_path, {"train": {"epochs": 9}, "model": {"fusion": "mean"}}, "b.yaml")
    cfg = load_config([a, b], ["model.dropout=0.3"])
    assert cfg.train.epochs == 9  # b over a
    assert cfg.train.batch_size == 8  # a's keys survive b's section
    assert cfg.model.fusion == "mean"
    assert cfg.model.dropout == 0.3  # --set over both
    assert load_config([b, a]).train.epochs == 7


BUNDLED = sorted(p.stem for p in (Path(config_module.__file__).parent / "configs").glob("*.yaml"))


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_profiles_load(name):
    path = Path(config_module.__file__).parent / "configs" / f"{name}.yaml"
    data = yaml.safe_load(path.read_text()) or {}
    want = config_to_dict(Config())
    for section, values in data.items():
        want[section].update(values or {})
    assert config_to_dict(load_config(name)) == want


@pytest.mark.skipif("paper" not in BUNDLED or "ablation-raw" not in BUNDLED,
                    reason="bundled profiles not present")
def test_bundled_profiles_stack():
    cfg = load_config(["paper", "ablation-raw"])
    assert cfg.model.streams == "raw"
    assert cfg.data.image_size == 224
    assert load_config("paper").model.streams == "dual"


def test_overrides_error_does_not_hide_yaml_values(tmp_path):
    p = _yaml(tmp_path, {"train": {"epochs": 7}})
    with pytest.raises(KoaError, match="--set"):
        load_config(p, ["train.bogus=1"])


def _modified() -> Config:
    cfg = Config()
    cfg.train.epochs = 3
    cfg.train.lr = 0.01
    cfg.model.streams = "raw"
    cfg.data.root = "/data/kl"
    cfg.data.subset = 100
    cfg.loss.alpha = "frequency"
    return cfg


@pytest.mark.parametrize("make", [Config, _modified], ids=["defaults", "modified"])
def test_dict_round_trip(make):
    cfg = make()
    d = config_to_dict(cfg)
    assert set(d) == {"data", "preprocess", "augment", "model", "loss", "train"}
    # plain data: survives JSON and YAML
    assert json.loads(json.dumps(d)) == d
    assert yaml.safe_load(yaml.safe_dump(d)) == d
    back = config_from_dict(d)
    assert config_to_dict(back) == d
    for f in dataclasses.fields(Config):
        for k, v in d[f.name].items():
            got = getattr(getattr(back, f.name), k)
            assert (list(got) if isinstance(got, tuple) else got) == v


def test_config_to_dict_lists_tuples():
    assert config_to_dict(Config())["loss"]["alpha"] == list(PAPER_ALPHA)


def test_saved_yaml_reloads_identically(tmp_path):
    cfg = _modified()
    p = _yaml(tmp_path, config_to_dict(cfg), "resolved.yaml")
    assert config_to_dict(load_config(p)) == config_to_dict(cfg)


def test_config_from_dict_skips_null_sections_and_rejects_unknown():
    assert config_from_dict({"train": None}).train.epochs == Config().train.epochs
    with pytest.raises(KoaError, match="unknown key model.layers"):
        config_from_dict({"model": {"layers": 50}}, origin="ckpt")
    with pytest.raises(KoaError, match="^ckpt: expected a mapping"):
        config_from_dict([1, 2], origin="ckpt")
