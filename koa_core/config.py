"""Run configuration: nested dataclasses whose defaults are the paper's values.

Resolution order (timm / torchvision-references style): dataclass defaults, then a YAML
profile, then ``--set section.key=value`` overrides from the command line. The resolved
config is saved with every run and every checkpoint.

Where the paper states a value the default cites the section; where the paper is silent
(optimizer, learning rate, epochs, batch size, attention heads, auxiliary loss weights)
the value is ours and marked ``# ours``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from koa_core.errors import KoaError
from koa_core.paper import ALPHA

__all__ = [
    "AugmentConfig",
    "Config",
    "DataConfig",
    "LossConfig",
    "ModelConfig",
    "PreprocessConfig",
    "SIDECAR_PREPROCESS_REQUIRED",
    "TrainConfig",
    "apply_overrides",
    "bundled_profiles",
    "check_values",
    "finite_number",
    "int_at_least",
    "optional",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "validate",
    "validate_preprocess",
    "validate_section",
]


@dataclass
class DataConfig:
    root: str | None = None  # dataset root in the public layout; None = synthetic phantom
    image_size: int = 224  # §2.1-2.2: 224x224 crops
    cache_dir: str | None = None  # None = ~/.cache/koa_core (never inside the data root)
    num_workers: int = 0  # ours: 0 keeps CPU runs simple; raise on a GPU machine
    device_resident: str = "auto"  # ours: views on the GPU, augmented there (auto = on CUDA)
    allow_leakage: bool = False  # refuse a patient found in two splits
    subset: int | None = None  # ours: cap images per split (stratified) for quick runs
    phantom_per_class: int = 40  # ours: phantom size when root is None
    phantom_seed: int = 0


@dataclass
class PreprocessConfig:
    crop: bool = True  # §2.2: central region crop by pixel density
    clahe_clip: float = 2.0  # §2.3: clip limit beta = 2.0 (1.0 and 3.0 tested)
    clahe_tiles: int = 8  # OpenCV default 8x8 tile grid (the paper is silent)
    # ours: a CLAHE applied to every decoded image before the steps above, for a model
    # trained on a copy whose images were enhanced upstream (5.0 with 8x8 tiles reproduces
    # the CLAHE-enhanced copy from the original crops); None: the images as read (paper)
    input_clahe_clip: float | None = None
    input_clahe_tiles: int = 8  # ours


@dataclass
class AugmentConfig:
    enabled: bool = True  # §2.3a: online augmentation
    class_specific: bool = True  # §2.3a: strong for KL1, distortion for KL3-4, basic KL0/2
    seed: int = 0
    # beyond the paper (koa_core.train.mixing): Beta(a, a) of mixup and CutMix; 0 = off (paper)
    mixup: float = 0.0
    cutmix: float = 0.0
    mix_prob: float = 1.0  # chance that a batch is mixed when a lever is on


@dataclass
class ModelConfig:
    streams: str = "dual"  # §2.4: "dual" | "raw" | "clahe" (Table 5 single-stream rows)
    cross_attention: bool = True  # §2.4b
    fusion: str = "gated"  # §2.4c: "gated" (softmax gate, w_raw + w_clahe = 1) | "mean"
    attention_heads: int = 8  # ours: the paper does not give the head count
    dropout: float = 0.4  # §2.3: p = 0.4 after fusion
    aux_heads: bool = True  # §4: auxiliary early-stage heads (KL 0-1-2) with label masking
    pretrained: str = "imagenet"  # §2.4: ImageNet init; "none" or a path to weights
    num_classes: int = 5
    # Beyond the paper: "softmax" (the paper's 5-way head) | "corn" (rank-consistent
    # ordinal head and loss, koa_core/model/ordinal.py)
    head: str = "softmax"


@dataclass
class LossConfig:
    gamma: float = 2.0  # §2.3b: focusing parameter
    alpha: Any = ALPHA  # §2.3b Table 2; or "frequency" / "uniform"
    aux_binary_weight: float = 0.3  # ours: weight of the KL0 vs KL1-2 head
    aux_early_weight: float = 0.3  # ours: weight of the KL0/KL1/KL2 head
    # Beyond the paper (recipe ablation; the defaults are the paper's loss):
    alpha_norm: str = "none"  # "none": alpha as given; "mean1": mean 1 over training labels
    aux_alpha: bool = False  # weight auxiliary samples by alpha of their grade
    sord: float = 0.0  # ordinal soft labels q_k ∝ exp(-sord (k-y)^2); 0 = one-hot (paper)


@dataclass
class TrainConfig:
    epochs: int = 40  # ours
    batch_size: int = 32  # ours
    lr: float = 3e-4  # ours (AdamW)
    weight_decay: float = 1e-4  # ours
    warmup_epochs: int = 2  # ours: linear warmup, then cosine decay
    # checkpoint chosen on VALIDATION macro F1; "last": fixed length, the last epoch scored
    select_metric: str = "macro_f1"
    patience: int = 10  # ours: early stopping on the selection metric
    seed: int = 42
    deterministic: bool = False
    amp: str = "auto"  # "auto" | "bf16" | "off"; auto = bf16 where supported
    channels_last: bool = True
    grad_clip: float = 5.0  # ours
    max_steps_per_epoch: int | None = None  # ours: cap for smoke runs
    compile: bool = False  # ours: torch.compile the training forward (1.4x on a GPU)
    ema_decay: float = 0.0  # beyond the paper: EMA of the weights per step; 0 = off


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# ---------------------------------------------------------------- validation
# Every field's range or choices, checked once when a config is resolved (load_config,
# config_from_dict) and again by fit(), before any data is read. Each rule returns None
# when the value is allowed, else the allowed range in words.
def int_at_least(lo: int):
    def rule(v):
        ok = isinstance(v, int) and not isinstance(v, bool) and v >= lo
        return None if ok else f"an integer >= {lo}"
    return rule


def _int_in(lo: int, hi: int):
    def rule(v):
        ok = isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi
        return None if ok else f"an integer in [{lo}, {hi}]"
    return rule


def optional(rule):
    return lambda v: None if v is None else rule(v)


def finite_number(lo: float, hi: float | None = None, lo_open: bool = False,
                  hi_open: bool = True):
    def rule(v):
        ok = (isinstance(v, (int, float)) and not isinstance(v, bool) and v == v
              and abs(v) != float("inf")
              and (v > lo if lo_open else v >= lo)
              and (hi is None or (v < hi if hi_open else v <= hi)))
        if ok:
            return None
        left = f"{'(' if lo_open else '['}{lo:g}"
        right = f"{hi:g}{')' if hi_open else ']'}" if hi is not None else "inf)"
        return f"a finite number in {left}, {right}"
    return rule


def _choice(*choices):
    return lambda v: None if v in choices else "one of " + ", ".join(map(str, choices))


def _bool(v):
    return None if isinstance(v, bool) else "true or false"


def _string(v):
    return None if isinstance(v, str) and v.strip() else "a non-empty string"


def _alpha(v):
    if isinstance(v, str) and v.strip().lower() in ("uniform", "frequency"):
        return None
    want = "'uniform', 'frequency' or 5 finite numbers >= 0 (KL0..KL4), at least one > 0"
    if isinstance(v, (str, bytes)) or not hasattr(v, "__len__") or len(v) != 5:
        return want
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and x == x
               and 0 <= x < float("inf") for x in v) or not any(x > 0 for x in v):
        return want
    return None


def _heads(v):
    ok = isinstance(v, int) and not isinstance(v, bool) and v >= 1 and 512 % v == 0
    return None if ok else "a divisor of 512 (the trunk's feature width): 1, 2, 4, 8, ... 512"


# The choices every part of the package checks against: one owner each.
STREAMS = ("dual", "raw", "clahe")  # model.streams (Table 5's rows)
FUSIONS = ("gated", "mean")  # model.fusion
HEADS = ("softmax", "corn")  # model.head
ALPHA_NORMS = ("none", "mean1")  # loss.alpha_norm
ENGINES = ("auto", "torch", "onnxruntime", "onnxruntime-int8")  # what runs the network
TTA_CHOICES = ("none", "flip")  # test-time augmentation

# Below 32 px ResNet-18's last stage has no pixel left (it downsamples 32x); the CLAHE tile
# grid also needs at least one pixel per tile.
MIN_IMAGE_SIZE = 32
RULES = {
    "data": {"root": optional(_string), "image_size": int_at_least(MIN_IMAGE_SIZE),
             "cache_dir": optional(_string), "num_workers": int_at_least(0),
             "device_resident": _choice("auto", "on", "off"), "allow_leakage": _bool,
             "subset": optional(int_at_least(1)), "phantom_per_class": int_at_least(1),
             "phantom_seed": int_at_least(0)},
    "preprocess": {"crop": _bool, "clahe_clip": finite_number(0, 1000, lo_open=True),
                   "clahe_tiles": int_at_least(1),
                   "input_clahe_clip": optional(finite_number(0, 1000, lo_open=True)),
                   "input_clahe_tiles": int_at_least(1)},
    "augment": {"enabled": _bool, "class_specific": _bool, "seed": int_at_least(0),
                "mixup": finite_number(0, 100), "cutmix": finite_number(0, 100),
                "mix_prob": finite_number(0, 1, hi_open=False)},
    "model": {"streams": _choice(*STREAMS), "cross_attention": _bool,
              "fusion": _choice(*FUSIONS), "attention_heads": _heads,
              "dropout": finite_number(0, 1), "aux_heads": _bool, "pretrained": _string,
              "num_classes": _choice(5), "head": _choice(*HEADS)},
    "loss": {"gamma": finite_number(0, 100), "alpha": _alpha,
             "aux_binary_weight": finite_number(0, 1000),
             "aux_early_weight": finite_number(0, 1000),
             "alpha_norm": _choice(*ALPHA_NORMS), "aux_alpha": _bool,
             "sord": finite_number(0, 1000)},
    "train": {"epochs": int_at_least(1), "batch_size": int_at_least(1),
              "lr": finite_number(0, 10, lo_open=True), "weight_decay": finite_number(0, 10),
              "warmup_epochs": int_at_least(0),
              "select_metric": _choice("macro_f1", "accuracy", "qwk", "kl4_recall", "last"),
              "patience": int_at_least(1), "seed": int_at_least(0),
              "deterministic": _bool, "amp": _choice("auto", "bf16", "off"),
              "channels_last": _bool, "grad_clip": finite_number(0, 1e6),
              "max_steps_per_epoch": optional(int_at_least(1)), "compile": _bool,
              "ema_decay": finite_number(0, 1)},
}


def check_values(rules: Mapping[str, Callable[[Any], str | None]], values: Any,
                 message: Callable[[str, Any, str], str]) -> None:
    """Every value ``rules`` names (an attribute of ``values``, or a key of a mapping where
    present) against its rule (None when allowed, else what is allowed, in words; a seed
    below 2^32 besides): the first violation is one KoaError line, ``message(key, value,
    what is allowed)``. The one machinery behind the configuration, a sidecar's
    preprocessing, the pretraining settings and the book's parameters."""
    for key, rule in rules.items():
        if isinstance(values, Mapping):
            if key not in values:
                continue
            value = values[key]
        else:
            value = getattr(values, key)
        problem = rule(value)
        if (problem is None and key.endswith("seed") and isinstance(value, int)
                and value >= 2 ** 32):
            problem = "an integer in [0, 2^32)"
        if problem is not None:
            raise KoaError(message(key, value, problem))


def _check(rule, section: str, key: str, value: Any, origin: str) -> None:
    """One value against its rule: one KoaError line naming the key, the value and what is
    allowed."""
    check_values({key: rule}, {key: value},
                 lambda k, v, p: f"{origin}: {section}.{k} = {v!r}: must be {p}")


def _check_tiles(tiles: int, size: int, where: str, origin: str) -> None:
    if tiles > size:
        raise KoaError(f"{origin}: preprocess.clahe_tiles = {tiles!r}: must be at most "
                       f"{where} ({size}), one pixel per tile")


def validate_section(section: str, values: Any, origin: str = "config") -> None:
    """One section of a configuration (e.g. a :class:`ModelConfig` a network is built from)
    against its :data:`RULES`, as :func:`validate` checks it."""
    check_values(RULES[section], values,
                 lambda k, v, p: f"{origin}: {section}.{k} = {v!r}: must be {p}")


def validate(cfg: Config, origin: str = "config") -> Config:
    """Check every field against :data:`RULES`; the first violation is one KoaError line
    naming the key, the value and what is allowed."""
    for section in RULES:
        validate_section(section, getattr(cfg, section), origin)
    _check_tiles(cfg.preprocess.clahe_tiles, cfg.data.image_size, "data.image_size", origin)
    if cfg.model.head == "corn" and cfg.loss.sord > 0:
        raise KoaError(f"{origin}: loss.sord = {cfg.loss.sord!r}: must be 0 with "
                       "model.head = 'corn' (CORN trains its own ordinal tasks; soft labels "
                       "are for the softmax head)")
    return cfg


# A checkpoint's input side (its sidecar's ``preprocess.size``): the configuration's
# lower bound, and an upper one past which one knee's views and activations no longer fit
# a machine's memory (the paper's crops are 224).
MAX_IMAGE_SIZE = 1024
SIDECAR_PREPROCESS_RULES = {
    "size": _int_in(MIN_IMAGE_SIZE, MAX_IMAGE_SIZE),
    **RULES["preprocess"],
    "input_clahe_tiles": _int_in(1, MAX_IMAGE_SIZE),
}
_OPTIONAL_IN_SIDECAR = ("input_clahe_clip", "input_clahe_tiles")  # older sidecars lack them
# what every checkpoint sidecar's preprocess entry holds
SIDECAR_PREPROCESS_REQUIRED = tuple(k for k in SIDECAR_PREPROCESS_RULES
                                    if k not in _OPTIONAL_IN_SIDECAR)


def validate_preprocess(values: Any, origin: str = "sidecar") -> dict:
    """A checkpoint sidecar's ``preprocess`` entry checked as a configuration's preprocess
    section is (:data:`RULES`), with ``size`` as ``data.image_size`` (bounded by
    :data:`MAX_IMAGE_SIZE`) and the CLAHE tile grid at most ``size``. Returns ``values``."""
    if not isinstance(values, dict):
        raise KoaError(f"{origin}: preprocess must be a mapping of the preprocessing "
                       f"settings, found {type(values).__name__}")
    for key, rule in SIDECAR_PREPROCESS_RULES.items():
        if key not in values:
            if key in _OPTIONAL_IN_SIDECAR:
                continue
            raise KoaError(f"{origin}: preprocess.{key} is missing (the preprocessing "
                           "needed to use the weights)")
        _check(rule, "preprocess", key, values[key], origin)
    _check_tiles(values["clahe_tiles"], values["size"], "preprocess.size", origin)
    return values


def config_to_dict(cfg: Config) -> dict:
    """Plain nested dict (tuples become lists) suitable for YAML/JSON."""

    def plain(v):
        if isinstance(v, tuple):
            return list(v)
        return v

    return {
        f.name: {k: plain(v) for k, v in dataclasses.asdict(getattr(cfg, f.name)).items()}
        for f in dataclasses.fields(cfg)
    }


def _section_types(cfg: Config) -> dict[str, dict[str, dataclasses.Field]]:
    return {
        f.name: {g.name: g for g in dataclasses.fields(getattr(cfg, f.name))}
        for f in dataclasses.fields(cfg)
    }


_BOOL_WORDS = {"true": True, "yes": True, "on": True, "1": True,
               "false": False, "no": False, "off": False, "0": False}


def _coerce(f: dataclasses.Field, value: Any, where: str) -> Any:
    """Bring a YAML/CLI value to the field's declared type, or fail with one clear line."""
    kind = str(f.type)
    if value is None:
        if "None" in kind or kind == "Any":
            return None
        raise KoaError(f"{where}: a value is required")
    if kind == "Any":
        return value
    try:
        if kind.startswith("bool"):
            if isinstance(value, bool):
                return value
            return _BOOL_WORDS[str(value).strip().lower()]
        if kind.startswith("int"):
            if isinstance(value, bool) or float(value) != int(float(value)):
                raise ValueError
            return int(float(value))
        if kind.startswith("float"):
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind.startswith("str"):
            if isinstance(value, bool):  # YAML 1.1 reads a bare off/on/no/yes as a bool
                return "on" if value else "off"
            return str(value)
    except (ValueError, KeyError, TypeError, OverflowError):
        raise KoaError(f"{where}: {value!r} is not a valid {kind.split(' ')[0]}") from None
    return value


def _set(cfg: Config, section: str, key: str, value: Any, origin: str) -> None:
    sections = _section_types(cfg)
    if section not in sections:
        raise KoaError(f"{origin}: unknown config section {section!r} "
                       f"(known: {', '.join(sections)})")
    if key not in sections[section]:
        raise KoaError(f"{origin}: unknown key {section}.{key} "
                       f"(known: {', '.join(sections[section])})")
    value = _coerce(sections[section][key], value, f"{origin}: {section}.{key}")
    setattr(getattr(cfg, section), key, value)


def config_from_dict(d: dict, origin: str = "config") -> Config:
    """Build a Config from a nested dict over the defaults; unknown keys are errors."""
    cfg = Config()
    if not isinstance(d, dict):
        raise KoaError(f"{origin}: expected a mapping of sections, got {type(d).__name__}")
    for section, values in d.items():
        if values is None:
            continue
        if not isinstance(values, dict):
            raise KoaError(f"{origin}: section {section!r} must be a mapping")
        for key, value in values.items():
            _set(cfg, section, key, value, origin)
    return validate(cfg, origin)


def _parse_value(text: str) -> Any:
    # YAML scalars: 3 -> int, 0.4 -> float, true -> bool, null -> None, [..] -> list
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(cfg: Config, overrides: list[str] | None) -> Config:
    """Apply ``section.key=value`` strings (values parsed as YAML scalars)."""
    for item in overrides or []:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise KoaError(f"--set {item!r}: expected section.key=value, e.g. train.epochs=5")
        dotted, text = item.split("=", 1)
        section, key = dotted.split(".", 1)
        _set(cfg, section.strip(), key.strip(), _parse_value(text), f"--set {item}")
    return cfg


def _read_yaml(path: str | Path) -> tuple[Path, dict]:
    p = Path(path)
    if not p.exists():
        bundled = Path(__file__).parent / "configs" / f"{path}.yaml"
        if not bundled.exists():
            raise KoaError(f"config file not found: {path} (bundled profiles: "
                           f"{', '.join(bundled_profiles())})")
        p = bundled
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise KoaError(f"{p}: not valid YAML ({str(exc).splitlines()[0]})") from None
    except UnicodeDecodeError:
        raise KoaError(f"{p}: not a text (UTF-8) file") from None
    except OSError as exc:
        raise KoaError(f"{p}: cannot read ({exc.strerror})") from None
    if not isinstance(data, dict):
        raise KoaError(f"{p}: expected a mapping of sections")
    return p, data


def bundled_profiles() -> list[str]:
    """Names of the YAML profiles shipped in ``koa_core/configs``."""
    return sorted(p.stem for p in (Path(__file__).parent / "configs").glob("*.yaml"))


def load_config(paths: str | Path | list | tuple | None = None,
                overrides: list[str] | None = None) -> Config:
    """Defaults, then each YAML file in order (a path or a bundled profile name, later
    files override earlier ones), then ``section.key=value`` overrides."""
    if paths is None:
        paths = []
    elif isinstance(paths, (str, Path)):
        paths = [paths]
    merged: dict = {}
    for path in paths:
        p, data = _read_yaml(path)
        for section, values in data.items():
            if values is None:
                continue
            if not isinstance(values, dict):
                raise KoaError(f"{p}: section {section!r} must be a mapping")
            merged.setdefault(section, {}).update(values)
    cfg = config_from_dict(merged, origin=", ".join(str(p) for p in paths) or "config")
    return validate(apply_overrides(cfg, overrides), "settings")
