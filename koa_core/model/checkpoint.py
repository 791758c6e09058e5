"""Checkpoints: safetensors weights plus a JSON text sidecar; loading never unpickles.

A checkpoint is two files, ``NAME.safetensors`` (tensors only) and ``NAME.json`` (the
resolved config, class names, preprocessing parameters, validation metrics, data and
hardware notes, code version). safetensors stores raw tensor bytes behind a JSON header,
so a downloaded checkpoint cannot run code; a pickle planted under a checkpoint's name is
refused without being read as a pickle. Both files are written to temporary names and
renamed, so an interruption never leaves a half-written checkpoint.

Training state for ``--resume`` (optimizer, scheduler, early-stopping bookkeeping) goes
through :func:`save_state`/:func:`load_state`: nested dicts and lists are flattened into
named tensors plus a JSON skeleton, again without pickle.
"""

from __future__ import annotations

from safetensors import safe_open
import contextlib
import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from koa_core import GRADE_NAMES, __version__
from koa_core.errors import KoaError
from koa_core.files import temp_path
from koa_core.config import config_from_dict
from koa_core.model.network import KLNet

__all__ = [
    "DEFAULT_CHECKPOINT",
    "load_checkpoint",
    "load_state",
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

def resolve_checkpoint(path: str | Path | None) -> Path:
    """The given checkpoint, or the shipped one; one clear error if neither exists."""
    if path:
        return Path(path)
    if DEFAULT_CHECKPOINT.exists():
        return DEFAULT_CHECKPOINT
    raise KoaError("no --checkpoint given and no shipped checkpoint is installed "
                   f"({DEFAULT_CHECKPOINT.name}); train one with `koa train`")
_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # pickle protocol 2+, torch's zip format


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


def _check_file(path: Path) -> None:
    if not path.exists():
        raise KoaError(f"{path}: checkpoint not found")
    if path.suffix != ".safetensors":
        raise KoaError(f"{path}: checkpoints are .safetensors files (pickled .pt/.pth "
                       "checkpoints are refused: loading them can run code)")
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head.startswith(_PICKLE_MAGIC):
        raise KoaError(f"{path}: looks like a pickle, not safetensors; refused without "
                       "loading (pickles can run code)")
    if len(head) < 8:
        raise KoaError(f"{path}: truncated checkpoint ({len(head)} bytes)")


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    _check_file(path)
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


def _check_digest(path: Path, side: dict[str, Any]) -> None:
    """Refuse weights that are not the ones their sidecar describes."""
    if side.get("weights_sha256") and side["weights_sha256"] != sha256_file(path):
        raise KoaError(f"{path}: the weights do not match their sidecar's SHA-256 (a write "
                       "cut short, or files from two checkpoints); refused")


def update_sidecar(path: str | Path, changes: dict[str, Any]) -> dict[str, Any]:
    """Merge ``changes`` into a checkpoint's sidecar, atomically; the weights and their
    SHA-256 stay as they are. A sidecar that does not match its weights is refused."""
    path = Path(path)
    _check_file(path)
    side = read_sidecar(path)
    _check_digest(path, side)
    digest = side.pop("weights_sha256", None)
    side.update(changes)
    if digest:
        side["weights_sha256"] = digest
    target = sidecar_path(path)
    os.replace(_write_text_tmp(json.dumps(side, indent=2, default=str) + "\n", target), target)
    return side


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu"):
    """Rebuild the model from a checkpoint: returns ``(model, sidecar)``, model in eval mode."""
    path = Path(path)
    tensors = _load_tensors(path)
    side = read_sidecar(path)
    _check_digest(path, side)
    cfg = config_from_dict(side.get("config", {}), origin=str(sidecar_path(path)))
    cfg.model.pretrained = "none"  # the checkpoint holds every weight
    model = KLNet(cfg.model)
    tensors = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise KoaError(f"{path}: weights do not match the sidecar's model config "
                       f"({str(exc).splitlines()[0][:160]})") from None
    return model.to(device).eval(), side


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
