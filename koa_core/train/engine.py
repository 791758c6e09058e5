"""Training engine: data preparation, epochs, validation-based selection, resume, DDP.

``fit(cfg, out_dir)`` trains the configured model (paper §2.3-2.4) and writes into the run
folder: ``config.yaml`` (resolved), ``history.csv`` (one row per epoch), ``best.safetensors``
+ ``best.json`` (the checkpoint chosen on VALIDATION, macro F1 by default) and
``last_state.safetensors`` (everything ``--resume`` needs). The test split is never read.

Choices the paper leaves open are ours and stated in :mod:`koa_core.config`: AdamW, a
linear warmup then cosine learning-rate schedule stepped per batch, early stopping on the
selection metric, gradient clipping. bf16 autocast and channels_last are used where the
hardware runs them natively (:mod:`koa_core.runtime`). Every epoch reseeds torch and
draws its order and every sample's augmentation from (seed, epoch), so a resumed run
repeats an uninterrupted one. Batches come from :mod:`koa_core.train.feed`: on a GPU the views
stay on the device and are augmented there; on a CPU a DataLoader with persistent workers
serves all epochs. Validation runs on the device and syncs once. The training step never waits
for the GPU: running sums stay on the device and the host checks the loss for NaN every
25 steps. ``history.csv`` records per epoch the images/s, the seconds spent waiting for
data and the mean GPU utilisation (:mod:`koa_core.train.gpumon`). Under ``torchrun`` the same
code trains with DistributedDataParallel (NCCL on GPUs, gloo on CPUs); rank 0 writes the
files. ``fit(..., data=, keep_state=False, deadline=)`` is the form
:mod:`~koa_core.experiments.campaign` uses to train many runs on data loaded once. The epoch
is chosen by :class:`koa_core.train.selection.Selection`; with ``train.ema_decay`` the
averaged weights (:mod:`koa_core.train.ema`) are validated, selected and saved. ``fit``
checks the config
(:func:`koa_core.config.validate`) and holds the run folder's lock
(:mod:`koa_core.locking`) while it writes. Prediction on views lives in
:mod:`koa_core.model.inference` (``predict_views``).
"""

from __future__ import annotations

import shutil
import threading
import csv
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml

from koa_core.train.augment import ClassAugment
from koa_core.model.inference import predict_views
from koa_core.data.cache import ViewCache
from koa_core.model.checkpoint import load_state, save_checkpoint, save_state
from koa_core.config import Config, config_from_dict, config_to_dict, validate
from koa_core.data.index import discover
from koa_core.train.dataset import KneeDataset, class_counts, stratified_subset
from koa_core.errors import KoaError
from koa_core.files import atomic_open
from koa_core.train.feed import device_views, make_feed
from koa_core.train.gpumon import GpuUtilization
from koa_core.locking import FolderLock, writes_the_folder
from koa_core.train.mixing import Mixer, mixed_loss
from koa_core.train.ema import WeightEMA
from koa_core.train.losses import KLMultiTaskLoss, normalise_alpha, resolve_alpha
from koa_core.metrics.classification import classification_metrics
from koa_core.model.network import build_model
from koa_core.data.preprocess import Preprocessor
from koa_core.runtime import amp_dtype, autocast, hardware_name, resolve_device, seed_everything
from koa_core.train.selection import Selection
from koa_core.data.phantom import write_phantom
from koa_core.train.runs import read_run

__all__ = [
    "DeadlineReached",
    "TrainData",
    "build_loss",
    "fit",
    "prepare_data",
    "train_augment",
]

HISTORY_FIELDS = ["epoch", "lr", "train_loss", "train_main", "train_aux_binary",
                  "train_aux_early", "train_accuracy", "val_accuracy", "val_macro_f1", "val_qwk",
                  "val_mae", "val_kl4_recall", "val_gate_raw", "epoch_s", "train_img_s",
                  "data_wait_s", "gpu_util"]


class DeadlineReached(Exception):
    """The next epoch would end after ``fit``'s deadline; the run is left incomplete."""


# ---------------------------------------------------------------- data
@dataclass
class TrainData:
    train: KneeDataset
    val: KneeDataset
    root: str
    counts: dict


def _phantom_root(cfg: Config, cache: ViewCache) -> Path:
    root = cache.dir / "phantom" / f"seed{cfg.data.phantom_seed}-n{cfg.data.phantom_per_class}"
    done = root / ".complete"
    if not done.exists():
        tmp = root.with_name(root.name + f".{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        write_phantom(tmp, per_class=cfg.data.phantom_per_class, seed=cfg.data.phantom_seed)
        (tmp / ".complete").write_text("ok\n")
        shutil.rmtree(root, ignore_errors=True)
        os.replace(tmp, root)
    return root


def train_augment(cfg: Config) -> ClassAugment | None:
    """The training split's augmentation (§2.3a) as ``cfg`` asks for it, or None."""
    if not cfg.augment.enabled:
        return None
    return ClassAugment(cfg.data.image_size, cfg.augment.class_specific, seed=cfg.augment.seed)


def prepare_data(cfg: Config, progress: bool = False, splits=("train", "val")) -> TrainData:
    """Discover the data (or make the phantom), check leakage, cache views, build datasets."""
    cache = ViewCache(cfg.data.cache_dir)
    root = Path(cfg.data.root) if cfg.data.root else _phantom_root(cfg, cache)
    index = discover(root, seed=cfg.train.seed, manifest_dir=cache.dir / "manifests")
    index.require_no_leakage(cfg.data.allow_leakage)
    pre = Preprocessor.from_config(cfg)
    sets = {}
    for split in splits:
        recs = stratified_subset(index.split(split), cfg.data.subset, seed=cfg.train.seed)
        if not recs:
            raise KoaError(f"{root}: the {split} split has no images")
        views = cache.get(recs, pre, root=str(root), progress=progress)
        sets[split] = KneeDataset(recs, views, train_augment(cfg) if split == "train" else None)
    counts = {s: class_counts(d.records) for s, d in sets.items()}
    return TrainData(sets.get("train"), sets.get("val"), str(root), counts)


# ---------------------------------------------------------------- steps
def _lr_lambda(total_steps: int, warmup_steps: int):
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    return f


def _train_epoch(model, batches, n_batches, loss_fn, opt, sched, device, dtype, cfg, epoch,
                 progress, rank, ema=None, raw_model=None):
    """One pass over ``batches`` (an iterator of ``(x, y)`` on the device, from a
    :mod:`~koa_core.train.feed`). Running sums stay on the device; the host syncs every
    ``check_every`` steps (every step on a CPU, where syncing is free) to stop at the first
    non-finite loss and to update the progress bar."""
    from tqdm.auto import tqdm

    model.train()
    mixer = Mixer.from_config(cfg.augment)  # None unless augment.mixup/cutmix (not paper)
    keys = ("loss", "main", "aux_binary", "aux_early")
    sums = torch.zeros(len(keys) + 1, dtype=torch.float64, device=device)  # + correct
    check_every = 25 if device.type == "cuda" else 1
    pending: list[torch.Tensor] = []
    steps = n = 0
    wait = 0.0
    t0 = time.perf_counter()
    it = tqdm(batches, total=n_batches, desc=f"epoch {epoch}", unit="batch", leave=False,
              disable=not progress or rank != 0)
    batches = iter(it)
    with GpuUtilization(device) as util:
        while True:
            tw = time.perf_counter()
            batch = next(batches, None)
            wait += time.perf_counter() - tw
            if batch is None:
                break
            x, y = batch
            mix = mixer(x, epoch, steps) if mixer is not None else None
            with autocast(device, dtype):
                out = model(mix.x if mix is not None else x)
            parts = mixed_loss(loss_fn, {k: (v.float() if v is not None else None)
                                         for k, v in out.items()}, y, mix)
            loss = parts["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.train.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            opt.step()
            sched.step()
            if ema is not None:
                ema.update(raw_model)
            with torch.no_grad():
                b = y.shape[0]
                # train_accuracy: a mixed knee (mixup/CutMix) counts against its own grade
                # y, not its partner's, so under mixing it is a rough gauge, below the
                # accuracy on clean knees; validation is never mixed.
                sums += torch.stack([parts[k].detach().double() * b for k in keys]
                                    + [(out["logits"].argmax(1) == y).sum().double()])
            n += b
            pending.append(loss.detach().float())
            steps += 1
            last = bool(cfg.train.max_steps_per_epoch
                        and steps >= cfg.train.max_steps_per_epoch)
            if len(pending) >= check_every or last:
                _check_losses(pending, epoch, steps)
                pending = []
                it.set_postfix(loss=f"{float(sums[0]) / n:.4f}")
            if last:
                break
        if pending:
            _check_losses(pending, epoch, steps)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    dt = time.perf_counter() - t0
    stats = torch.cat([sums.cpu(), torch.tensor([float(n)], dtype=torch.float64)])
    if dist.is_initialized():
        stats = stats.to(device)
        dist.all_reduce(stats)
        stats = stats.cpu()
    n_all = max(1.0, float(stats[-1]))
    row = {f"train_{k}" if k != "loss" else "train_loss": stats[i].item() / n_all
           for i, k in enumerate(keys)}
    row.update({"train_accuracy": stats[len(keys)].item() / n_all,
                "train_img_s": n_all / dt, "data_wait_s": wait,
                "gpu_util": util.mean if util.mean is not None else float("nan")})
    return row


def _check_losses(pending: list[torch.Tensor], epoch: int, steps: int) -> None:
    """Stop at the first non-finite loss among the last ``len(pending)`` steps (one sync)."""
    bad = (~torch.isfinite(torch.stack(pending))).nonzero()
    if len(bad):
        step = steps - len(pending) + int(bad[0, 0])
        value = float(pending[int(bad[0, 0])])
        raise KoaError(f"the training loss became {value} at epoch {epoch}, step {step}; "
                       "lower train.lr or check the data")


def _validate(model, views, grades: np.ndarray, cfg, device, dtype) -> dict:
    probs, gates = predict_views(model, views, max(256, cfg.train.batch_size * 2), device,
                                 dtype, cfg.train.channels_last)
    m = classification_metrics(grades, probs.argmax(1), n_boot=0)
    return {"val_accuracy": m["accuracy"], "val_macro_f1": m["macro_f1"], "val_qwk": m["qwk"],
            "val_mae": m["mae"], "val_kl4_recall": m["per_class"]["4"]["recall"],
            "val_gate_raw": float(gates[:, 0].mean()) if gates is not None else float("nan"),
            "_metrics": m}


# ---------------------------------------------------------------- fit
def build_loss(cfg: Config, train_counts) -> KLMultiTaskLoss:
    """The training objective ``cfg.loss`` asks for, with alpha resolved on the training
    counts (and rescaled to mean 1 over them with ``loss.alpha_norm=mean1``)."""
    alpha = resolve_alpha(cfg.loss.alpha, train_counts)
    if cfg.loss.alpha_norm == "mean1":
        alpha = normalise_alpha(alpha, train_counts)
    elif cfg.loss.alpha_norm != "none":
        raise KoaError(f"loss.alpha_norm: {cfg.loss.alpha_norm!r} is not one of none, mean1")
    return KLMultiTaskLoss(alpha=alpha, gamma=cfg.loss.gamma,
                           aux_binary_weight=cfg.loss.aux_binary_weight,
                           aux_early_weight=cfg.loss.aux_early_weight,
                           sord=cfg.loss.sord, aux_alpha=cfg.loss.aux_alpha)


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise KoaError(f"{out}: output folder is not writable ({exc.strerror})") from None


def _sigterm_as_interrupt(signum, frame):
    raise KeyboardInterrupt


def fit(cfg: Config, out_dir: str | Path, resume: bool = False, progress: bool = True,
        data: TrainData | None = None, keep_state: bool = True,
        deadline: float | None = None) -> dict:
    """Train, select on validation, write the run folder; returns a summary dict.

    ``data``: datasets already prepared for ``cfg`` (a campaign loads them once).
    ``keep_state=False``: no ``last_state.safetensors`` (no ``--resume``) and the selected
    weights are kept in memory and written once at the end, which saves a checkpoint write
    per epoch. ``deadline`` (a ``time.monotonic()`` value): raise :class:`DeadlineReached`
    instead of starting an epoch that would end after it.
    """
    validate(cfg)  # a config built or changed in Python gets the same checks as --set
    if not writes_the_folder():  # DDP: rank 0 writes the folder
        return _fit(cfg, out_dir, resume, progress, data, keep_state, deadline)
    with FolderLock(out_dir, "training a run"):
        return _fit(cfg, out_dir, resume, progress, data, keep_state, deadline)


def _fit(cfg: Config, out_dir, resume, progress, data, keep_state, deadline) -> dict:
    out = Path(out_dir)
    ddp = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if ddp and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if ddp else 0
    world = dist.get_world_size() if ddp else 1
    device = resolve_device(int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    state_path, best_path = out / "last_state.safetensors", out / "best.safetensors"
    if resume:
        if not (out / "config.yaml").exists() or not state_path.exists():
            raise KoaError(f"{out}: nothing to resume (no config.yaml / last_state.safetensors)")
    elif rank == 0 and (state_path.exists() or best_path.exists()):
        raise KoaError(f"{out}: already holds a run; use --resume to continue it or choose "
                       "another --out")
    if rank == 0:
        _check_writable(out)
    seed_everything(cfg.train.seed, cfg.train.deterministic)

    # Rank 0 builds the phantom and the view cache first; the others then read them.
    if data is None:
        if rank == 0:
            data = prepare_data(cfg, progress=progress)
        if ddp:
            dist.barrier()
        if rank != 0:
            data = prepare_data(cfg)

    model = build_model(cfg.model).to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    dtype = amp_dtype(cfg.train.amp, device)
    loss_fn = build_loss(cfg, data.counts["train"]).to(device)
    ema = WeightEMA(model, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None
    evaluated = ema.module if ema is not None else model  # validated, selected, saved
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr,
                            weight_decay=cfg.train.weight_decay)
    sampler = None
    if ddp:
        from torch.utils.data.distributed import DistributedSampler
        sampler = DistributedSampler(data.train, shuffle=True, seed=cfg.train.seed)
    feed = make_feed(cfg, data.train, device, sampler=sampler, distributed=ddp)
    steps_per_epoch = len(feed) if not ddp else math.ceil(
        len(data.train) / (cfg.train.batch_size * world))
    if cfg.train.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.train.max_steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, _lr_lambda(steps_per_epoch * cfg.train.epochs,
                        steps_per_epoch * cfg.train.warmup_epochs))
    net = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True) \
        if ddp else model
    if cfg.train.compile:
        # Training steps run compiled; validation and the checkpoints use ``model`` itself,
        # whose parameters the compiled module shares.
        net = torch.compile(net)
    # validation views: on the device with the device feed (uploaded once), else host
    val_views = device_views(data.val.views, device) if feed.kind == "device" \
        else data.val.views

    start, history = 1, []
    sel = Selection(cfg.train.patience)
    if resume:
        st = load_state(state_path)
        model.load_state_dict(st["model"])
        if ema is not None:
            ema.load_state_dict(st["ema"])
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        start, history = st["epoch"] + 1, st["history"]
        sel = Selection(cfg.train.patience, st["best"], st["stale"])
    if rank == 0:
        (out / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))

    # SIGTERM and SIGINT both stop at once with the last completed epoch intact. SIGINT is
    # set explicitly because a process started in the background inherits it as ignored.
    old_handlers = {sig: signal.signal(sig, _sigterm_as_interrupt)
                    for sig in (signal.SIGTERM, signal.SIGINT)} \
        if rank == 0 and _in_main_thread() else {}
    t_start = time.perf_counter()
    held = None  # keep_state=False: (epoch, metrics, weights) of the selected epoch

    try:
        for epoch in range(start, cfg.train.epochs + 1):
            if sel.stop:
                break
            if deadline is not None and history:
                last = history[-1]["epoch_s"]
                if time.monotonic() + 1.2 * last > deadline:
                    raise DeadlineReached(f"epoch {epoch} would end after the deadline")
            torch.manual_seed(cfg.train.seed * 1000 + epoch)
            t0 = time.perf_counter()
            row = {"epoch": epoch, "lr": opt.param_groups[0]["lr"]}
            row.update(_train_epoch(net, feed.epoch(epoch), len(feed), loss_fn, opt, sched,
                                    device, dtype, cfg, epoch, progress, rank, ema, model))
            if epoch < cfg.train.epochs:
                feed.prefetch(epoch + 1)  # the loader's workers start during validation
            val = _validate(evaluated, val_views, data.val.grades, cfg, device, dtype)
            metrics = val.pop("_metrics")
            row.update(val)
            row["epoch_s"] = time.perf_counter() - t0
            history.append(row)
            score = row[f"val_{cfg.train.select_metric}"]
            improved = sel.update(score)
            if rank == 0:
                if improved and keep_state:
                    save_checkpoint(best_path, evaluated, _sidecar(cfg, data, metrics, epoch,
                                                                  device, world))
                elif improved:
                    held = (epoch, metrics, {k: v.detach().clone()
                                             for k, v in evaluated.state_dict().items()})
                if keep_state:
                    save_state(state_path, {"model": model.state_dict(),
                                            **({"ema": ema.state_dict()} if ema else {}),
                                            "optimizer": opt.state_dict(),
                                            "scheduler": sched.state_dict(), "epoch": epoch,
                                            "best": sel.best, "stale": sel.stale,
                                            "history": history})
                # after the state: an epoch in history.csv is always one --resume can continue
                # (a signal during the state's write used to leave a row without its state)
                _write_history(out / "history.csv", history)
                if progress:
                    print(f"epoch {epoch:3d}  loss {row['train_loss']:.4f}  val acc "
                          f"{row['val_accuracy']:.4f}  macro F1 {row['val_macro_f1']:.4f}  "
                          f"QWK {row['val_qwk']:.4f}{'  *' if improved else ''}", flush=True)
        if held is not None:  # training is over: the model can take the selected weights
            epoch, metrics, weights = held
            model.load_state_dict(weights)
            save_checkpoint(best_path, model, _sidecar(cfg, data, metrics, epoch, device, world))
    finally:
        feed.close()
        for sig, handler in old_handlers.items():
            # None: the old handler was installed outside Python; the default is closest
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        if ddp:
            dist.destroy_process_group()
    return {"out": str(out), "epochs_run": len(history),
            "best_" + cfg.train.select_metric: sel.best,
            "history": history, "seconds": time.perf_counter() - t_start, "feed": feed.kind,
            "hardware": hardware_name(device)}


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _write_history(path: Path, history: list[dict]) -> None:
    with atomic_open(path, newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(history)


def _sidecar(cfg: Config, data: TrainData, metrics: dict, epoch: int, device, world) -> dict:
    return {
        "config": config_to_dict(cfg),
        "preprocess": Preprocessor.from_config(cfg).params(),
        "epoch": epoch,
        "select_metric": cfg.train.select_metric,
        "val_metrics": metrics,
        "data": {"root": data.root if cfg.data.root else "synthetic phantom",
                 "train_counts": data.counts["train"], "val_counts": data.counts["val"]},
        "hardware": hardware_name(device) + (f" x{world}" if world > 1 else ""),
        "torch": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def load_run_config(run_dir: str | Path) -> Config:
    """The resolved config saved in a run folder."""
    p = Path(run_dir) / "config.yaml"
    cfg = read_run(run_dir)["config"]
    if cfg is None:
        raise KoaError(f"{p}: cannot read the run's config")
    return config_from_dict(cfg, origin=str(p))
