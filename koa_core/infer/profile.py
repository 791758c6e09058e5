"""Which input check judges a checkpoint's images, and fitting one (``koa input-profile``).

The check itself (:mod:`koa_core.data.inputcheck`) knows images only; this module ties it to
checkpoints: :func:`check_for` picks the profile in a checkpoint's sidecar, or the shipped
checkpoint's (the public dataset's original crops) for one without; :func:`store_profile`
fits a profile on a data root's training split and writes it into a sidecar.
"""

from __future__ import annotations

from pathlib import Path

from koa_core.data.index import discover
from koa_core.data.inputcheck import InputCheck, fit_profile, profile_images
from koa_core.errors import KoaError
from koa_core.model.checkpoint import DEFAULT_CHECKPOINT, read_sidecar, update_sidecar
from koa_core.runtime import provenance

__all__ = ["check_for", "store_profile"]


def check_for(sidecar: dict) -> InputCheck | None:
    """The check a checkpoint's images are judged by: its own profile, or else the shipped
    checkpoint's (the public dataset's original crops); None when neither exists."""
    if sidecar.get("input_profile"):
        return InputCheck(sidecar["input_profile"], "the checkpoint's training images")

    try:
        shipped = read_sidecar(DEFAULT_CHECKPOINT).get("input_profile")
    except KoaError:
        shipped = None
    return InputCheck(shipped, "the shipped checkpoint's training images") if shipped else None


def store_profile(checkpoint: str | Path, root: str | Path, n: int = 1000, seed: int = 0,
                  command: str | None = None) -> dict:
    """Fit the input profile on ``n`` training images of ``root`` (drawn with ``seed``; the
    validation and test splits are never read) and store it in the checkpoint's sidecar.
    Too few images with contrast among them is one line, and the sidecar is left as it
    was (:func:`~koa_core.data.inputcheck.fit_profile`)."""
    ckpt = Path(checkpoint)
    if ckpt.suffix.lower() != ".safetensors":
        raise KoaError(f"{ckpt}: profile the .safetensors checkpoint (its sidecar keeps the "
                       "profile, and an ONNX export made from it afterwards carries it)")
    records = discover(root).split("train")
    if not records:
        raise KoaError(f"{root}: no training split to profile (ROOT/train/0..4)")
    images = profile_images([r.path for r in records], n, seed)
    profile = fit_profile(images, f"{len(images)} of the {len(records)} training images of "
                                  f"{Path(root).name}, drawn with seed {seed}")
    if profile["blank_left_out"]:  # fitted on the images with contrast only
        profile["what"] += f" ({profile['blank_left_out']} blank ones left out)"
    profile.update(provenance(command))
    update_sidecar(ckpt, {"input_profile": profile})
    return profile
