"""Checkpoints: safetensors weights plus a JSON text sidecar; loading never unpickles.

A checkpoint is two files, ``NAME.safetensors`` (tensors only) and ``NAME.json`` (the
resolved config, class names, preprocessing parameters, validation metrics, data and
hardware notes, code version). safetensors stores raw tensor bytes behind a JSON header,
so a downloaded checkpoint cannot run code; the format is recognised by parsing that header
(:func:`read_header`), and a pickle or torch.save zip planted under a checkpoint's name is
refused by what it is, without being read as one. Both files are written to temporary
names and renamed, so an interruption never leaves a half-written checkpoint.

:func:`check_checkpoint` is what every engine goes through before it runs a checkpoint:
the format, the sidecar's settings against the configuration's ranges (``koa_core.config``),
the weights' SHA-256 against the one the sidecar records, and the sidecar's architecture
against the weights' tensor shapes; each refusal is one line.

Training state for ``--resume`` (optimizer, scheduler, early-stopping bookkeeping) goes
through :func:`save_state`/:func:`load_state`: nested dicts and lists are flattened into
named tensors plus a JSON skeleton, again without pickle.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from koa_core import GRADE_NAMES, __version__
from koa_core.config import Config, ModelConfig, config_from_dict, validate_preprocess
from koa_core.errors import KoaError
from koa_core.files import publish_mode, temp_path
from koa_core.model.network import KLNet

__all__ = [
    "DEFAULT_CHECKPOINT",
    "CheckedCheckpoint",
    "check_checkpoint",
    "check_sidecar",
    "load_checkpoint",
    "load_state",
    "read_header",
    "read_sidecar",
    "save_checkpoint",
    "save_state",
    "resolve_checkpoint",
    "sha256_file",
    "sidecar_path",
    "update_sidecar",
    "write_pair",
]

# The shipped checkpoint (see README): used when no --checkpoint is given.
DEFAULT_CHECKPOINT = (Path(__file__).resolve().parents[1] / "weights"
                      / "koa-dual-kl224.safetensors")


SIDECAR_MAX_BYTES = 16 * 2 ** 20  # a sidecar is tens of kilobytes
HEADER_MAX_BYTES = 100 * 2 ** 20  # safetensors' own limit on its JSON header


def resolve_checkpoint(path: str | Path | None) -> Path:
    """The given checkpoint, or the shipped one; one clear error if neither exists."""
    if path:
        return Path(path)
    if DEFAULT_CHECKPOINT.exists():
        return DEFAULT_CHECKPOINT
    raise KoaError("no --checkpoint given and no shipped checkpoint is installed "
                   f"({DEFAULT_CHECKPOINT.name}); train one with `koa train`")


def sidecar_path(weights: str | Path) -> Path:
    return Path(weights).with_suffix(".json")


_tmp = temp_path  # the pair's two files go through the shared temporary names


def _write_failed(path: Path, tmp: Path, exc: OSError) -> KoaError:
    with contextlib.suppress(OSError):  # e.g. its folder is a file: nothing was written
        tmp.unlink(missing_ok=True)
    return KoaError(f"{path}: could not be written ({exc.strerror or exc}); the previous "
                    "file, if any, is intact")


def _write_tensors_tmp(tensors: dict[str, torch.Tensor], path: Path,
                       metadata: dict[str, str] | None = None) -> Path:
    tmp = _tmp(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp),
                  metadata=metadata)
        publish_mode(tmp)  # safetensors creates 0600
    except OSError as exc:
        raise _write_failed(path, tmp, exc) from None
    except SafetensorError as exc:  # the writer's own error for a failed write (disk full)
        raise _write_failed(path, tmp, OSError(str(exc))) from None
    return tmp


def _write_text_tmp(text: str, path: Path) -> Path:
    tmp = _tmp(path)
    try:
        tmp.write_text(text)
    except OSError as exc:
        raise _write_failed(path, tmp, exc) from None
    return tmp


def _atomic_write_tensors(tensors: dict[str, torch.Tensor], path: Path,
                          metadata: dict[str, str] | None = None) -> None:
    os.replace(_write_tensors_tmp(tensors, path, metadata), path)


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file's bytes, read a mebibyte at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _what_else(head: bytes) -> str | None:
    """What a file that is not safetensors is, by its own format's signature."""
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive (torch.save's format, which holds a pickle)"
    if head[0] == 0x80 and 2 <= head[1] <= 5:
        return f"a pickle (protocol {head[1]})"
    return None


def _json_object(raw: bytes) -> dict | None:
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _check_extent(path: Path, header: dict, data_bytes: int) -> dict:
    """The header's tensors must tile the bytes after it exactly: a file cut short (or
    grown) is refused before its weights are hashed or read."""
    end = 0
    for name, entry in header.items():
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if name == "__metadata__":
            continue
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(
                isinstance(o, int) and not isinstance(o, bool) for o in offsets)
                and 0 <= offsets[0] <= offsets[1]):
            raise KoaError(f"{path}: corrupt checkpoint header (tensor {name!r} has no valid "
                           "data offsets)")
        end = max(end, offsets[1])
    if end != data_bytes:
        raise KoaError(f"{path}: corrupt or truncated checkpoint (its header describes "
                       f"{end:,} bytes of tensors, the file holds {data_bytes:,})")
    return header


def read_header(path: str | Path) -> dict:
    """The parsed header of a safetensors checkpoint: an 8-byte little-endian length, then
    that many bytes of JSON object (tensor names, dtypes, shapes, offsets). The format is
    recognised by parsing, never by one byte; any other file is refused in one line by
    what it is (a pickle, torch.save's zip), without being read as such."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise KoaError(f"{path}: checkpoint not found") from None
    if path.suffix != ".safetensors":
        raise KoaError(f"{path}: checkpoints are .safetensors files (pickled .pt/.pth "
                       "checkpoints are refused: loading them can run code)")
    if not stat.S_ISREG(st.st_mode):
        raise KoaError(f"{path}: not a regular file; not read")
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise KoaError(f"{path}: truncated checkpoint ({len(head)} bytes)")
        n = int.from_bytes(head, "little")
        fits = 2 <= n <= min(st.st_size - 8, HEADER_MAX_BYTES)
        header = _json_object(fh.read(n)) if fits else None
    if header is not None:
        return _check_extent(path, header, st.st_size - 8 - n)
    kind = _what_else(head)
    if kind:
        raise KoaError(f"{path}: {kind}, not safetensors; refused without loading "
                       "(unpickling can run code)")
    why = (f"its header length, {n:,} bytes, does not fit the file's {st.st_size:,}"
           if not fits else "its header is not a JSON object")
    raise KoaError(f"{path}: not a safetensors file ({why}); corrupt or truncated checkpoint")


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    read_header(path)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise KoaError(f"{path}: corrupt or truncated checkpoint "
                       f"({str(exc).splitlines()[0][:120]})") from None


def save_checkpoint(path: str | Path, model: torch.nn.Module, sidecar: dict[str, Any],
                    dtype: torch.dtype | None = None) -> Path:
    """Write ``path`` (.safetensors) and its ``.json`` sidecar atomically."""
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_suffix(".safetensors")
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v)
             for k, v in model.state_dict().items()}
    side = {"format": "koa_core-checkpoint-1", "code_version": __version__,
            "class_names": list(GRADE_NAMES), "weights_dtype": str(dtype or "as trained"),
            **sidecar}
    return write_pair(path, state, side, metadata={"format": "koa_core-checkpoint-1"})


def write_pair(path: Path, tensors: dict[str, torch.Tensor], sidecar: dict[str, Any],
               metadata: dict[str, str] | None = None) -> Path:
    """Write ``path`` (safetensors) and its ``.json`` sidecar, which gets the weights'
    SHA-256 as its last key. Both files are written in full under temporary names before
    either replaces the old pair, so a pair torn by a crash between the two renames is
    refused at load instead of being read as one checkpoint."""
    tmp_w = _write_tensors_tmp(tensors, path, metadata=metadata)
    side = {**sidecar, "weights_sha256": sha256_file(tmp_w)}
    try:
        tmp_s = _write_text_tmp(json.dumps(side, indent=2, default=str) + "\n",
                                sidecar_path(path))
    except KoaError:
        tmp_w.unlink(missing_ok=True)
        raise
    os.replace(tmp_w, path)
    os.replace(tmp_s, sidecar_path(path))
    return path


def read_sidecar(path: str | Path) -> dict[str, Any]:
    """The sidecar of a checkpoint (``NAME.json`` beside ``NAME.safetensors``)."""
    side = sidecar_path(path)
    try:
        st = os.stat(side)  # stat first: a FIFO or a device put there is never opened
        if not stat.S_ISREG(st.st_mode) or st.st_size > SIDECAR_MAX_BYTES:
            raise KoaError(f"{side}: unreadable checkpoint sidecar (not a regular file of at "
                           f"most {SIDECAR_MAX_BYTES // 2 ** 20} MiB)")
        data = json.loads(side.read_text())
        if not isinstance(data, dict):
            raise KoaError(f"{side}: unreadable checkpoint sidecar (a JSON object expected, "
                           f"found a JSON {type(data).__name__})")
        return data
    except FileNotFoundError:
        raise KoaError(f"{side}: checkpoint sidecar not found (it holds the config and "
                       "preprocessing needed to use the weights)") from None
    except (OSError, ValueError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise KoaError(f"{side}: unreadable checkpoint sidecar ({exc})") from None


def _check_digest(path: Path, side: dict[str, Any], digest: str | None = None) -> None:
    """Refuse weights that are not the ones their sidecar describes."""
    if side.get("weights_sha256") and side["weights_sha256"] != (digest or sha256_file(path)):
        raise KoaError(f"{path}: the weights do not match their sidecar's SHA-256 (a write "
                       "cut short, or files from two checkpoints); refused")


def update_sidecar(path: str | Path, changes: dict[str, Any]) -> dict[str, Any]:
    """Merge ``changes`` into a checkpoint's sidecar, atomically; the weights and their
    SHA-256 stay as they are. A sidecar that does not match its weights is refused."""
    path = Path(path)
    read_header(path)
    side = read_sidecar(path)
    _check_digest(path, side)
    digest = side.pop("weights_sha256", None)
    side.update(changes)
    if digest:
        side["weights_sha256"] = digest
    target = sidecar_path(path)
    os.replace(_write_text_tmp(json.dumps(side, indent=2, default=str) + "\n", target), target)
    return side


def check_sidecar(side: dict[str, Any], origin: str = "checkpoint sidecar") -> Config:
    """A sidecar's claims checked as a configuration is: its ``config`` by
    :func:`~koa_core.config.config_from_dict` (every range of ``RULES``), its ``preprocess``
    by :func:`~koa_core.config.validate_preprocess`, its class names against the model's
    classes. Returns the resolved config, its model ready to build (``pretrained`` none)."""
    cfg = config_from_dict(side.get("config", {}), origin=origin)
    if "preprocess" in side:
        validate_preprocess(side["preprocess"], origin)
    names = side.get("class_names")
    if names is not None and (not isinstance(names, list)
                              or len(names) != cfg.model.num_classes
                              or not all(isinstance(n, str) for n in names)):
        raise KoaError(f"{origin}: class_names must be {cfg.model.num_classes} names, one per "
                       "grade")
    cfg.model.pretrained = "none"  # the checkpoint holds every weight
    return cfg


def _describe(m: ModelConfig) -> str:
    on = {True: "on", False: "off"}
    return (f"streams {m.streams}, cross-attention {on[m.cross_attention]}, fusion {m.fusion}, "
            f"head {m.head}, {m.num_classes} classes, aux heads {on[m.aux_heads]}")


def _shapes(path: Path, header: dict) -> dict[str, tuple[int, ...]]:
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if not isinstance(shape, list) or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise KoaError(f"{path}: corrupt checkpoint header (tensor {name!r} has no valid "
                           "shape)")
        out[name] = tuple(shape)
    return out


def _check_architecture(path: Path, header: dict, model: ModelConfig) -> None:
    """Refuse a sidecar whose model is not the one the weights' tensor shapes describe
    (the model is built on the meta device: shapes only, no memory, no time)."""
    with torch.device("meta"):
        want = {k: tuple(v.shape) for k, v in KLNet(model).state_dict().items()}
    got = _shapes(path, header)
    missing, extra = sorted(want.keys() - got.keys()), sorted(got.keys() - want.keys())
    wrong = [k for k in want if k in got and want[k] != got[k]]
    if missing:
        problem = f"{len(missing)} tensor(s) it needs are not in the weights, e.g. {missing[0]}"
    elif extra:
        problem = f"{len(extra)} tensor(s) in the weights have no place in it, e.g. {extra[0]}"
    elif wrong:
        problem = (f"{wrong[0]} is {list(got[wrong[0]])} in the weights, "
                   f"{list(want[wrong[0]])} in the model")
    else:
        return
    raise KoaError(f"{path}: the weights do not match the sidecar's model ({_describe(model)}): "
                   f"{problem}; refused")


@dataclass(frozen=True)
class CheckedCheckpoint:
    """A checkpoint that passed :func:`check_checkpoint`."""

    path: Path
    sidecar: dict[str, Any]
    config: Config  # the sidecar's, resolved and range-checked
    digest: str  # SHA-256 of the weights file itself (never the sidecar's claim)


def check_checkpoint(path: str | Path) -> CheckedCheckpoint:
    """Every check a checkpoint passes before any engine runs it (torch, an ONNX export
    and its cache alike): the safetensors format, parsed; the sidecar's settings in their
    ranges; the weights' SHA-256 against the sidecar's; the sidecar's architecture against
    the weights' tensor shapes. Each refusal is one line."""
    path = Path(path)
    header = read_header(path)
    side = read_sidecar(path)
    cfg = check_sidecar(side, str(sidecar_path(path)))
    digest = sha256_file(path)
    _check_digest(path, side, digest)
    _check_architecture(path, header, cfg.model)
    return CheckedCheckpoint(path, side, cfg, digest)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu"):
    """Rebuild the model from a checkpoint (:func:`check_checkpoint` first): returns
    ``(model, sidecar)``, model in eval mode."""
    checked = check_checkpoint(path)
    path = checked.path
    tensors = _load_tensors(path)
    model = KLNet(checked.config.model)
    tensors = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise KoaError(f"{path}: weights do not match the sidecar's model config "
                       f"({str(exc).splitlines()[0][:160]})") from None
    return model.to(device).eval(), checked.sidecar


# ---------------------------------------------------------------- training state
def _flatten(obj: Any, tensors: dict[str, torch.Tensor], prefix: str) -> Any:
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj
        return {"__t__": prefix}
    if isinstance(obj, dict):
        return {"__d__": [[k, _flatten(v, tensors, f"{prefix}.{k}")] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return [_flatten(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {prefix} in a training state")


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict) and "__t__" in obj:
        return tensors[obj["__t__"]]
    if isinstance(obj, dict) and "__d__" in obj:
        return {k: _unflatten(v, tensors) for k, v in obj["__d__"]}
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def save_state(path: str | Path, state: dict[str, Any]) -> Path:
    """Store a nested dict of tensors and plain values (no pickle), atomically."""
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(state, tensors, "s")
    _atomic_write_tensors(tensors, path, metadata={"skeleton": json.dumps(skeleton)})
    return path


def load_state(path: str | Path) -> dict[str, Any]:
    """Inverse of :func:`save_state`."""
    path = Path(path)
    tensors = _load_tensors(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            skeleton = json.loads(fh.metadata()["skeleton"])
    except (KeyError, TypeError, json.JSONDecodeError, SafetensorError):
        raise KoaError(f"{path}: not a koa_core training state") from None
    return _unflatten(skeleton, tensors)
