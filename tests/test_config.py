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
    Config,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
)
from koa_core.errors import KoaError
from koa_core.paper import ALPHA


@pytest.mark.parametrize("section, key, paper_value", [
    ("preprocess", "clahe_clip", 2.0),  # §2.3: beta = 2.0
    ("preprocess", "crop", True),  # §2.2 central crop
    ("loss", "gamma", 2.0),  # §2.3b
    ("loss", "alpha", ALPHA),  # Table 2
    ("model", "dropout", 0.4),  # §2.3
    ("model", "streams", "dual"),  # §2.4
    ("model", "cross_attention", True),  # §2.4b
    ("model", "fusion", "gated"),  # §2.4c
    ("model", "num_classes", 5),
    ("model", "head", "softmax"),  # §2.4: a 5-way classification head
    ("data", "image_size", 224),  # §2.1-2.2
    ("augment", "enabled", True),
    ("augment", "class_specific", True),  # §2.3a
    ("train", "select_metric", "macro_f1"),
])
def test_defaults_are_the_papers(section, key, paper_value):
    assert getattr(getattr(Config(), section), key) == paper_value
    assert getattr(getattr(load_config(), section), key) == paper_value


def test_paper_alpha_is_table2():
    assert ALPHA == (0.133, 0.267, 0.133, 0.133, 0.333)
    assert len(ALPHA) == 5
    assert sum(ALPHA) == pytest.approx(0.999, abs=1e-9)
    # one source: the default is koa_core.paper's, not a copy kept in config
    assert config_module.LossConfig().alpha is ALPHA
    assert not hasattr(config_module, "PAPER_ALPHA")


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
    assert config_to_dict(Config())["loss"]["alpha"] == list(ALPHA)


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


# ---------------------------------------------------------------- settings validated at load
# An oracle written apart from config.RULES: (kind, low, high) with inclusive low and
# exclusive high for numbers, or a tuple of choices.
import math  # noqa: E402

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

INT, NUM, BOOL, CHOICE = "int", "num", "bool", "choice"
ORACLE = {
    ("data", "image_size"): (INT, 32, None), ("data", "num_workers"): (INT, 0, None),
    ("data", "subset"): (INT, 1, None), ("data", "phantom_per_class"): (INT, 1, None),
    ("data", "phantom_seed"): (INT, 0, 2 ** 32),
    ("data", "device_resident"): (CHOICE, ("auto", "on", "off")),
    ("data", "allow_leakage"): (BOOL,),
    ("preprocess", "clahe_clip"): (NUM, 0, 1000, "open"), ("preprocess", "clahe_tiles"):
        (INT, 1, None),  # and at most image_size: below ("preprocess", "crop"): (BOOL,),
    ("augment", "seed"): (INT, 0, 2 ** 32), ("augment", "enabled"): (BOOL,),
    ("model", "streams"): (CHOICE, ("dual", "raw", "clahe")),
    ("model", "fusion"): (CHOICE, ("gated", "mean")),
    ("model", "head"): (CHOICE, ("softmax", "corn")),
    ("model", "attention_heads"): (CHOICE, (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)),
    ("model", "dropout"): (NUM, 0, 1), ("model", "num_classes"): (CHOICE, (5,)),
    ("loss", "gamma"): (NUM, 0, 100), ("loss", "aux_binary_weight"): (NUM, 0, 1000),
    ("loss", "aux_early_weight"): (NUM, 0, 1000), ("loss", "sord"): (NUM, 0, 1000),
    ("loss", "alpha_norm"): (CHOICE, ("none", "mean1")),
    ("train", "epochs"): (INT, 1, None), ("train", "batch_size"): (INT, 1, None),
    ("train", "lr"): (NUM, 0, 10, "open"), ("train", "weight_decay"): (NUM, 0, 10),
    ("train", "warmup_epochs"): (INT, 0, None), ("train", "patience"): (INT, 1, None),
    ("train", "seed"): (INT, 0, 2 ** 32), ("train", "grad_clip"): (NUM, 0, 1e6),
    ("train", "ema_decay"): (NUM, 0, 1), ("train", "max_steps_per_epoch"): (INT, 1, None),
    ("train", "amp"): (CHOICE, ("auto", "bf16", "off")),
    ("train", "select_metric"): (CHOICE, ("macro_f1", "accuracy", "qwk", "kl4_recall",
                                          "last")),
}


OPTIONAL = {("data", "subset"), ("train", "max_steps_per_epoch")}
BOOL_WORDS = ("true", "false", "yes", "no", "on", "off", "1", "0")


def _expected_valid(field, value):
    """What the settings may hold, from the value as YAML parsed it."""
    spec = ORACLE[field]
    kind = spec[0]
    if value is None:
        return field in OPTIONAL
    if kind == BOOL:
        return isinstance(value, bool) or (not isinstance(value, float)
                                           and str(value).lower() in BOOL_WORDS)
    if kind == CHOICE and all(isinstance(c, str) for c in spec[1]):
        if isinstance(value, bool):  # YAML reads a bare on/off as a bool
            value = "on" if value else "off"
        return isinstance(value, str) and value in spec[1]
    if isinstance(value, str):  # e.g. "1e-05": YAML 1.1 reads it as text, numbers accept it
        try:
            value = float(value)
        except ValueError:
            return False
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if not math.isfinite(value):
        return False
    if kind in (INT, CHOICE) and float(value) != int(value):
        return False
    if kind == CHOICE:
        return int(value) in spec[1]
    lo, hi = spec[1], spec[2]
    if len(spec) > 3 and value <= lo:
        return False
    return value >= lo and (hi is None or value < hi)


VALUES = st.one_of(
    st.integers(-5, 600), st.integers(-10 ** 12, 10 ** 12),
    st.floats(allow_nan=True, allow_infinity=True), st.floats(-2, 2),
    st.booleans(), st.sampled_from(["auto", "on", "off", "dual", "raw", "clahe", "gated",
                                    "corn", "softmax", "mean", "none", "mean1", "bf16",
                                    "macro_f1", "qwk", "inf", "nan", "", "x", "1e309"]))


def _text(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return ".nan"
        if math.isinf(value):
            return ".inf" if value > 0 else "-.inf"
        return repr(value)
    return str(value)


@settings(max_examples=400, deadline=None, derandomize=True)  # the same draws on every run
@given(field=st.sampled_from(sorted(ORACLE)), value=VALUES)
def test_every_setting_is_checked_at_load_against_its_range(field, value):
    section, key = field
    text = _text(value)
    parsed = config_module._parse_value(text)
    try:
        cfg = load_config(None, [f"{section}.{key}={text}"])
        accepted = True
    except KoaError as exc:
        accepted = False
        assert "\n" not in str(exc) and f"{section}.{key}" in str(exc)
    expect = _expected_valid(field, parsed)
    if field == ("preprocess", "clahe_tiles") and isinstance(parsed, (int, float)) \
            and not isinstance(parsed, bool) and math.isfinite(parsed) and parsed > 224:
        expect = False  # more tiles than pixels
    assert accepted == expect, (field, text, parsed)
    if accepted:
        assert config_module.validate(cfg) is cfg


@pytest.mark.parametrize("setting", [
    "train.epochs=-1", "data.image_size=7", "train.lr=-0.1", "train.batch_size=0",
    "model.dropout=1.5", "data.num_workers=-3", "preprocess.clahe_tiles=-1",
    "model.attention_heads=inf", "train.seed=1e309", "data.image_size=-1",
    "model.attention_heads=3", "loss.alpha=[1,2,3]", "loss.gamma=-1", "train.amp=fp8"])
def test_bad_settings_stop_koa_train_before_anything_is_written(setting, tmp_path, capsys):
    from koa_core.cli import main

    out = tmp_path / "run"
    rc = main(["train", "--config", "demo", "--set", setting, "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("koa: error:") and err.count("\n") == 1
    assert setting.split("=")[0] in err and "Traceback" not in err
    assert not out.exists()


def test_the_corn_head_refuses_soft_labels():
    assert load_config(None, ["model.head=corn"]).model.head == "corn"
    with pytest.raises(KoaError, match=r"loss.sord = 2.0: must be 0 with model.head = 'corn'"):
        load_config(None, ["model.head=corn", "loss.sord=2"])


def test_a_config_changed_in_python_is_checked_by_fit(tmp_path):
    from koa_core.train.engine import fit

    cfg = load_config("demo")
    cfg.train.epochs = 0
    with pytest.raises(KoaError, match="train.epochs = 0"):
        fit(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
