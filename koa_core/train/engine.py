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

import csv
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml

from koa_core.config import Config, config_from_dict, config_to_dict, validate
from koa_core.data.cache import ViewCache
from koa_core.data.index import discover
from koa_core.data.phantom import write_phantom
from koa_core.data.preprocess import Preprocessor
from koa_core.errors import KoaError
from koa_core.files import atomic_open, make_writable_folder
from koa_core.locking import FolderLock, writes_the_folder
from koa_core.metrics.classification import classification_metrics
from koa_core.model.checkpoint import load_state, save_checkpoint, save_state
from koa_core.model.inference import predict_views
from koa_core.model.network import build_model
from koa_core.runtime import (
    amp_dtype,
    autocast,
    hardware_name,
    resolve_device,
    seed_everything,
    sigterm_as_interrupt,
)
from koa_core.train.augment import ClassAugment
from koa_core.train.dataset import KneeDataset, class_counts, stratified_subset
from koa_core.train.ema import WeightEMA
from koa_core.train.feed import DeviceFeed, LoaderFeed, device_views, make_feed
from koa_core.train.gpumon import GpuUtilization
from koa_core.train.losses import KLMultiTaskLoss, normalise_alpha, resolve_alpha
from koa_core.train.mixing import Mixer, mixed_loss
from koa_core.train.runs import read_run
from koa_core.train.selection import Selection
from koa_core.train.selection import score as selection_score

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
_STATE_FILE = "last_state.safetensors"
_BEST_FILE = "best.safetensors"


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


def _train_epoch(trainer: _Trainer, epoch: int) -> dict:
    """One pass over the epoch's batches (``(x, y)`` on the device, from the trainer's
    :mod:`~koa_core.train.feed`). Running sums stay on the device; the host syncs every
    ``check_every`` steps (every step on a CPU, where syncing is free) to stop at the first
    non-finite loss and to update the progress bar."""
    from tqdm.auto import tqdm

    cfg, device = trainer.cfg, trainer.device
    batches, n_batches = trainer.feed.epoch(epoch), len(trainer.feed)
    trainer.net.train()
    mixer = Mixer.from_config(cfg.augment)  # None unless augment.mixup/cutmix (not paper)
    keys = ("loss", "main", "aux_binary", "aux_early")
    sums = torch.zeros(len(keys) + 1, dtype=torch.float64, device=device)  # + correct
    check_every = 25 if device.type == "cuda" else 1
    pending: list[torch.Tensor] = []
    steps = n = 0
    wait = 0.0
    t0 = time.perf_counter()
    it = tqdm(batches, total=n_batches, desc=f"epoch {epoch}", unit="batch", leave=False,
              disable=not trainer.progress or trainer.rank != 0)
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
            out, parts = _train_step(trainer, x, y, mix)
            loss = parts["loss"]
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
    row = _epoch_means(sums, n, keys, device)
    row.update({"train_img_s": row.pop("_n") / dt, "data_wait_s": wait,
                "gpu_util": util.mean if util.mean is not None else float("nan")})
    return row


def _epoch_means(sums: torch.Tensor, n: int, keys: tuple[str, ...], device) -> dict:
    """The epoch's mean loss terms and accuracy over every process's knees (DDP: summed
    across ranks), and ``_n``, the knees counted."""
    stats = torch.cat([sums.cpu(), torch.tensor([float(n)], dtype=torch.float64)])
    if dist.is_initialized():
        stats = stats.to(device)
        dist.all_reduce(stats)
        stats = stats.cpu()
    n_all = max(1.0, float(stats[-1]))
    row = {f"train_{k}" if k != "loss" else "train_loss": stats[i].item() / n_all
           for i, k in enumerate(keys)}
    row.update({"train_accuracy": stats[len(keys)].item() / n_all, "_n": n_all})
    return row


def _train_step(trainer: _Trainer, x: torch.Tensor, y: torch.Tensor, mix) -> tuple[dict, dict]:
    """One optimizer step on a batch (mixed where ``mix`` says): the outputs and the loss
    terms; the EMA follows the weights."""
    with autocast(trainer.device, trainer.dtype):
        out = trainer.net(mix.x if mix is not None else x)
    parts = mixed_loss(trainer.loss_fn, {k: (v.float() if v is not None else None)
                                         for k, v in out.items()}, y, mix)
    trainer.opt.zero_grad(set_to_none=True)
    parts["loss"].backward()
    if trainer.cfg.train.grad_clip:
        torch.nn.utils.clip_grad_norm_(trainer.net.parameters(), trainer.cfg.train.grad_clip)
    trainer.opt.step()
    trainer.sched.step()
    if trainer.ema is not None:
        trainer.ema.update(trainer.model)
    return out, parts


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
    if cfg.loss.alpha_norm == "mean1":  # one of ALPHA_NORMS, as validate() checked
        alpha = normalise_alpha(alpha, train_counts)
    return KLMultiTaskLoss(alpha=alpha, gamma=cfg.loss.gamma,
                           aux_binary_weight=cfg.loss.aux_binary_weight,
                           aux_early_weight=cfg.loss.aux_early_weight,
                           sord=cfg.loss.sord, aux_alpha=cfg.loss.aux_alpha)


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


@dataclass(frozen=True)
class _Trainer:
    """Everything one run trains with, built whole by :meth:`build` before the first epoch
    and never reassigned: the epochs change only what is inside these objects (weights,
    optimizer and schedule state, the feed's position); the rest that changes from epoch
    to epoch is the :class:`_RunState`."""

    cfg: Config
    out: Path
    progress: bool
    keep_state: bool
    ddp: bool
    rank: int
    world: int
    device: torch.device
    dtype: torch.dtype | None  # None: fp32, no autocast (train.amp off or bf16 not native)
    data: TrainData
    model: torch.nn.Module  # the network whose weights train
    ema: WeightEMA | None  # None: train.ema_decay is 0, no averaged weights
    evaluated: torch.nn.Module  # validated, selected, saved (the EMA's module or model)
    net: torch.nn.Module  # what the training steps run (DDP, compiled)
    loss_fn: torch.nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    feed: LoaderFeed | DeviceFeed
    val_views: np.ndarray | torch.Tensor  # on the device with the device feed, else host

    @property
    def state_path(self) -> Path:
        return self.out / _STATE_FILE

    @property
    def best_path(self) -> Path:
        return self.out / _BEST_FILE

    @classmethod
    def build(cls, cfg: Config, out_dir, resume: bool, progress: bool,
              data: TrainData | None, keep_state: bool) -> _Trainer:
        """Processes, device, checks of the run folder, data, then the model (and its EMA),
        loss, optimizer, feed, schedule and validation views, in that order (the order
        the random numbers are drawn in)."""
        out = Path(out_dir)
        ddp, rank, world, device = _start_processes()
        _check_run_folder(out, rank, resume)
        seed_everything(cfg.train.seed, cfg.train.deterministic)
        data = _load_data(cfg, data, rank, ddp, progress)
        model = _build_model(cfg, device)
        dtype = amp_dtype(cfg.train.amp, device)
        loss_fn = build_loss(cfg, data.counts["train"]).to(device)
        ema = WeightEMA(model, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr,
                                weight_decay=cfg.train.weight_decay)
        feed = _build_feed(cfg, data.train, device, ddp)
        sched = _build_schedule(cfg, opt, feed, len(data.train), ddp, world)
        net = _training_net(cfg, model, ddp)
        val_views = device_views(data.val.views, device) if feed.kind == "device" \
            else data.val.views  # uploaded once with the device feed
        return cls(cfg=cfg, out=out, progress=progress, keep_state=keep_state, ddp=ddp,
                   rank=rank, world=world, device=device, dtype=dtype, data=data,
                   model=model, ema=ema, evaluated=ema.module if ema is not None else model,
                   net=net, loss_fn=loss_fn, opt=opt, sched=sched, feed=feed,
                   val_views=val_views)


@dataclass
class _RunState:
    """What changes from epoch to epoch: the selection, the history and the first epoch
    still to train; fresh for a new run, read from the last state by :func:`_restore`,
    advanced by :func:`_end_of_epoch`."""

    sel: Selection
    start: int = 1
    history: list[dict] = field(default_factory=list)
    # keep_state=False only: (epoch, metrics, weights) of the selected epoch, kept in memory
    # and written once at the end; None until an epoch is selected
    held: tuple[int, dict, dict] | None = None


def _start_processes() -> tuple[bool, int, int, torch.device]:
    """(ddp, rank, world size, device): the process group under ``torchrun``, this
    process's device."""
    ddp = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if ddp and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if ddp else (0, 1)
    device = resolve_device(int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return ddp, rank, world, device


def _check_run_folder(out: Path, rank: int, resume: bool) -> None:
    if resume:
        if not (out / "config.yaml").exists() or not (out / _STATE_FILE).exists():
            raise KoaError(f"{out}: nothing to resume (no config.yaml / "
                           "last_state.safetensors)")
    elif rank == 0 and ((out / _STATE_FILE).exists() or (out / _BEST_FILE).exists()):
        raise KoaError(f"{out}: already holds a run; use --resume to continue it or choose "
                       "another --out")
    if rank == 0:
        make_writable_folder(out)


def _load_data(cfg: Config, data: TrainData | None, rank: int, ddp: bool,
               progress: bool) -> TrainData:
    """``data`` where given; else rank 0 builds the phantom and the view cache first and
    the others then read them."""
    if data is None:
        if rank == 0:
            data = prepare_data(cfg, progress=progress)
        if ddp:
            dist.barrier()
        if rank != 0:
            data = prepare_data(cfg)
    return data


def _build_model(cfg: Config, device: torch.device) -> torch.nn.Module:
    model = build_model(cfg.model).to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _build_feed(cfg: Config, train: KneeDataset, device: torch.device,
                ddp: bool) -> LoaderFeed | DeviceFeed:
    sampler = None
    if ddp:
        from torch.utils.data.distributed import DistributedSampler
        sampler = DistributedSampler(train, shuffle=True, seed=cfg.train.seed)
    return make_feed(cfg, train, device, sampler=sampler, distributed=ddp)


def _build_schedule(cfg: Config, opt: torch.optim.Optimizer, feed, n_train: int, ddp: bool,
                    world: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup then cosine, stepped per batch."""
    steps_per_epoch = len(feed) if not ddp else math.ceil(
        n_train / (cfg.train.batch_size * world))
    if cfg.train.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.train.max_steps_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(
        opt, _lr_lambda(steps_per_epoch * cfg.train.epochs,
                        steps_per_epoch * cfg.train.warmup_epochs))


def _training_net(cfg: Config, model: torch.nn.Module, ddp: bool) -> torch.nn.Module:
    """What the training steps run: ``model``, under DDP and compiled where asked."""
    net = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True) \
        if ddp else model
    if cfg.train.compile:
        # Training steps run compiled; validation and the checkpoints use ``model`` itself,
        # whose parameters the compiled module shares.
        net = torch.compile(net)
    return net


def _restore(trainer: _Trainer) -> _RunState:
    """Continue from the run folder's last state (``--resume``): the weights, EMA,
    optimizer and schedule go back into the trainer's objects; the epoch, history and
    selection make the run state."""
    st = load_state(trainer.state_path)
    trainer.model.load_state_dict(st["model"])
    if trainer.ema is not None:
        trainer.ema.load_state_dict(st["ema"])
    trainer.opt.load_state_dict(st["optimizer"])
    trainer.sched.load_state_dict(st["scheduler"])
    return _RunState(Selection(trainer.cfg.train.patience, st["best"], st["stale"]),
                     start=st["epoch"] + 1, history=st["history"])


def _run_epoch(trainer: _Trainer, epoch: int) -> tuple[dict, dict]:
    """Train one epoch and validate: the history row and the validation metrics."""
    cfg = trainer.cfg
    torch.manual_seed(cfg.train.seed * 1000 + epoch)
    t0 = time.perf_counter()
    row = {"epoch": epoch, "lr": trainer.opt.param_groups[0]["lr"]}
    row.update(_train_epoch(trainer, epoch))
    if epoch < cfg.train.epochs:
        trainer.feed.prefetch(epoch + 1)  # the loader's workers start during validation
    val = _validate(trainer.evaluated, trainer.val_views, trainer.data.val.grades, cfg,
                    trainer.device, trainer.dtype)
    metrics = val.pop("_metrics")
    row.update(val)
    row["epoch_s"] = time.perf_counter() - t0
    return row, metrics


def _end_of_epoch(trainer: _Trainer, state: _RunState, epoch: int, row: dict,
                  metrics: dict) -> None:
    """Select, then (rank 0) save the checkpoint, the state and the history, in that order."""
    state.history.append(row)
    improved = state.sel.update(selection_score(row, trainer.cfg.train.select_metric))
    if trainer.rank != 0:
        return
    if improved and trainer.keep_state:
        save_checkpoint(trainer.best_path, trainer.evaluated,
                        _run_sidecar(trainer, metrics, epoch))
    elif improved:
        state.held = (epoch, metrics, {k: v.detach().clone()
                                       for k, v in trainer.evaluated.state_dict().items()})
    if trainer.keep_state:
        save_state(trainer.state_path, {
            "model": trainer.model.state_dict(),
            **({"ema": trainer.ema.state_dict()} if trainer.ema else {}),
            "optimizer": trainer.opt.state_dict(), "scheduler": trainer.sched.state_dict(),
            "epoch": epoch, "best": state.sel.best, "stale": state.sel.stale,
            "history": state.history})
    # after the state: an epoch in history.csv is always one --resume can continue
    # (a signal during the state's write used to leave a row without its state)
    _write_history(trainer.out / "history.csv", state.history)
    if trainer.progress:
        print(f"epoch {epoch:3d}  loss {row['train_loss']:.4f}  val acc "
              f"{row['val_accuracy']:.4f}  macro F1 {row['val_macro_f1']:.4f}  "
              f"QWK {row['val_qwk']:.4f}{'  *' if improved else ''}", flush=True)


def _run_sidecar(trainer: _Trainer, metrics: dict, epoch: int) -> dict:
    return _sidecar(trainer.cfg, trainer.data, metrics, epoch, trainer.device, trainer.world)


def _fit(cfg: Config, out_dir, resume, progress, data, keep_state, deadline) -> dict:
    trainer = _Trainer.build(cfg, out_dir, resume, progress, data, keep_state)
    state = _restore(trainer) if resume else _RunState(Selection(cfg.train.patience))
    if trainer.rank == 0:
        (trainer.out / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg),
                                                                sort_keys=False))
    t_start = time.perf_counter()
    try:
        # SIGTERM and SIGINT both stop at once with the last completed epoch intact
        with sigterm_as_interrupt(sigint=True, active=trainer.rank == 0):
            try:
                _train_epochs(trainer, state, deadline)
            finally:
                trainer.feed.close()
    finally:
        if trainer.ddp:
            dist.destroy_process_group()
    return {"out": str(trainer.out), "epochs_run": len(state.history),
            "best_" + cfg.train.select_metric: state.sel.best,
            "history": state.history, "seconds": time.perf_counter() - t_start,
            "feed": trainer.feed.kind, "hardware": hardware_name(trainer.device)}


def _train_epochs(trainer: _Trainer, state: _RunState, deadline: float | None) -> None:
    """The epochs from ``state.start`` until the last or early stopping; then, with
    ``keep_state=False``, the selected weights written once."""
    for epoch in range(state.start, trainer.cfg.train.epochs + 1):
        if state.sel.stop:
            break
        if deadline is not None and state.history:
            if time.monotonic() + 1.2 * state.history[-1]["epoch_s"] > deadline:
                raise DeadlineReached(f"epoch {epoch} would end after the deadline")
        _end_of_epoch(trainer, state, epoch, *_run_epoch(trainer, epoch))
    if state.held is not None:  # training is over: the model can take the selected weights
        epoch, metrics, weights = state.held
        trainer.model.load_state_dict(weights)
        save_checkpoint(trainer.best_path, trainer.model,
                        _run_sidecar(trainer, metrics, epoch))


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
