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
from dataclasses import dataclass, field
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
from koa_core.files import atomic_open, make_writable_folder
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
from koa_core.train.selection import Selection, score as selection_score
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


def _train_epoch(run: _Run, epoch: int) -> dict:
    """One pass over the epoch's batches (``(x, y)`` on the device, from the run's
    :mod:`~koa_core.train.feed`). Running sums stay on the device; the host syncs every
    ``check_every`` steps (every step on a CPU, where syncing is free) to stop at the first
    non-finite loss and to update the progress bar."""
    from tqdm.auto import tqdm

    cfg, device = run.cfg, run.device
    batches, n_batches = run.feed.epoch(epoch), len(run.feed)
    run.net.train()
    mixer = Mixer.from_config(cfg.augment)  # None unless augment.mixup/cutmix (not paper)
    keys = ("loss", "main", "aux_binary", "aux_early")
    sums = torch.zeros(len(keys) + 1, dtype=torch.float64, device=device)  # + correct
    check_every = 25 if device.type == "cuda" else 1
    pending: list[torch.Tensor] = []
    steps = n = 0
    wait = 0.0
    t0 = time.perf_counter()
    it = tqdm(batches, total=n_batches, desc=f"epoch {epoch}", unit="batch", leave=False,
              disable=not run.progress or run.rank != 0)
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
            out, parts = _train_step(run, x, y, mix)
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


def _train_step(run: _Run, x: torch.Tensor, y: torch.Tensor, mix) -> tuple[dict, dict]:
    """One optimizer step on a batch (mixed where ``mix`` says): the outputs and the loss
    terms; the EMA follows the weights."""
    with autocast(run.device, run.dtype):
        out = run.net(mix.x if mix is not None else x)
    parts = mixed_loss(run.loss_fn, {k: (v.float() if v is not None else None)
                                     for k, v in out.items()}, y, mix)
    run.opt.zero_grad(set_to_none=True)
    parts["loss"].backward()
    if run.cfg.train.grad_clip:
        torch.nn.utils.clip_grad_norm_(run.net.parameters(), run.cfg.train.grad_clip)
    run.opt.step()
    run.sched.step()
    if run.ema is not None:
        run.ema.update(run.model)
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
    if cfg.loss.alpha_norm == "mean1":
        alpha = normalise_alpha(alpha, train_counts)
    elif cfg.loss.alpha_norm != "none":
        raise KoaError(f"loss.alpha_norm: {cfg.loss.alpha_norm!r} is not one of none, mean1")
    return KLMultiTaskLoss(alpha=alpha, gamma=cfg.loss.gamma,
                           aux_binary_weight=cfg.loss.aux_binary_weight,
                           aux_early_weight=cfg.loss.aux_early_weight,
                           sord=cfg.loss.sord, aux_alpha=cfg.loss.aux_alpha)


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


@dataclass
class _Run:
    """What one training run holds while it trains: set up by :func:`_setup`, continued by
    :func:`_restore`, advanced by :func:`_end_of_epoch`."""

    cfg: Config
    out: Path
    progress: bool
    keep_state: bool
    ddp: bool
    rank: int
    world: int
    device: torch.device
    data: TrainData | None = None
    model: torch.nn.Module | None = None  # the network whose weights train
    evaluated: torch.nn.Module | None = None  # validated, selected, saved (EMA or model)
    net: torch.nn.Module | None = None  # what the training steps run (DDP, compiled)
    ema: WeightEMA | None = None
    dtype: torch.dtype | None = None
    loss_fn: torch.nn.Module | None = None
    opt: torch.optim.Optimizer | None = None
    sched: torch.optim.lr_scheduler.LRScheduler | None = None
    feed: object = None
    val_views: object = None
    sel: Selection | None = None
    start: int = 1
    history: list = field(default_factory=list)
    held: tuple | None = None  # keep_state=False: (epoch, metrics, weights) of the selection

    @property
    def state_path(self) -> Path:
        return self.out / "last_state.safetensors"

    @property
    def best_path(self) -> Path:
        return self.out / "best.safetensors"


def _setup(cfg: Config, out_dir, resume: bool, progress: bool, data, keep_state: bool) -> _Run:
    """Processes, device, checks of the run folder, data, model, loss, optimizer, feed."""
    ddp = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if ddp and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    run = _Run(cfg, Path(out_dir), progress, keep_state, ddp,
               dist.get_rank() if ddp else 0, dist.get_world_size() if ddp else 1,
               resolve_device(int(os.environ.get("LOCAL_RANK", "0"))))
    if run.device.type == "cuda":
        torch.cuda.set_device(run.device)
    _check_run_folder(run, resume)
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    # Rank 0 builds the phantom and the view cache first; the others then read them.
    if data is None:
        if run.rank == 0:
            data = prepare_data(cfg, progress=progress)
        if ddp:
            dist.barrier()
        if run.rank != 0:
            data = prepare_data(cfg)
    run.data = data
    _build_training(run)
    return run


def _check_run_folder(run: _Run, resume: bool) -> None:
    if resume:
        if not (run.out / "config.yaml").exists() or not run.state_path.exists():
            raise KoaError(f"{run.out}: nothing to resume (no config.yaml / "
                           "last_state.safetensors)")
    elif run.rank == 0 and (run.state_path.exists() or run.best_path.exists()):
        raise KoaError(f"{run.out}: already holds a run; use --resume to continue it or choose "
                       "another --out")
    if run.rank == 0:
        make_writable_folder(run.out)


def _build_training(run: _Run) -> None:
    """The model (and its EMA), loss, optimizer, feed, schedule and validation views."""
    cfg, device = run.cfg, run.device
    model = build_model(cfg.model).to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    run.model, run.dtype = model, amp_dtype(cfg.train.amp, device)
    run.loss_fn = build_loss(cfg, run.data.counts["train"]).to(device)
    run.ema = WeightEMA(model, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None
    run.evaluated = run.ema.module if run.ema is not None else model
    run.opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr,
                                weight_decay=cfg.train.weight_decay)
    sampler = None
    if run.ddp:
        from torch.utils.data.distributed import DistributedSampler
        sampler = DistributedSampler(run.data.train, shuffle=True, seed=cfg.train.seed)
    run.feed = make_feed(cfg, run.data.train, device, sampler=sampler, distributed=run.ddp)
    steps_per_epoch = len(run.feed) if not run.ddp else math.ceil(
        len(run.data.train) / (cfg.train.batch_size * run.world))
    if cfg.train.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.train.max_steps_per_epoch)
    run.sched = torch.optim.lr_scheduler.LambdaLR(
        run.opt, _lr_lambda(steps_per_epoch * cfg.train.epochs,
                            steps_per_epoch * cfg.train.warmup_epochs))
    net = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True) \
        if run.ddp else model
    if cfg.train.compile:
        # Training steps run compiled; validation and the checkpoints use ``model`` itself,
        # whose parameters the compiled module shares.
        net = torch.compile(net)
    run.net = net
    # validation views: on the device with the device feed (uploaded once), else host
    run.val_views = device_views(run.data.val.views, device) if run.feed.kind == "device" \
        else run.data.val.views
    run.sel = Selection(cfg.train.patience)


def _restore(run: _Run) -> None:
    """Continue from the run folder's last state (``--resume``)."""
    st = load_state(run.state_path)
    run.model.load_state_dict(st["model"])
    if run.ema is not None:
        run.ema.load_state_dict(st["ema"])
    run.opt.load_state_dict(st["optimizer"])
    run.sched.load_state_dict(st["scheduler"])
    run.start, run.history = st["epoch"] + 1, st["history"]
    run.sel = Selection(run.cfg.train.patience, st["best"], st["stale"])


def _run_epoch(run: _Run, epoch: int) -> tuple[dict, dict]:
    """Train one epoch and validate: the history row and the validation metrics."""
    cfg = run.cfg
    torch.manual_seed(cfg.train.seed * 1000 + epoch)
    t0 = time.perf_counter()
    row = {"epoch": epoch, "lr": run.opt.param_groups[0]["lr"]}
    row.update(_train_epoch(run, epoch))
    if epoch < cfg.train.epochs:
        run.feed.prefetch(epoch + 1)  # the loader's workers start during validation
    val = _validate(run.evaluated, run.val_views, run.data.val.grades, cfg, run.device,
                    run.dtype)
    metrics = val.pop("_metrics")
    row.update(val)
    row["epoch_s"] = time.perf_counter() - t0
    return row, metrics


def _end_of_epoch(run: _Run, epoch: int, row: dict, metrics: dict) -> None:
    """Select, then (rank 0) save the checkpoint, the state and the history, in that order."""
    run.history.append(row)
    improved = run.sel.update(selection_score(row, run.cfg.train.select_metric))
    if run.rank != 0:
        return
    if improved and run.keep_state:
        save_checkpoint(run.best_path, run.evaluated, _run_sidecar(run, metrics, epoch))
    elif improved:
        run.held = (epoch, metrics, {k: v.detach().clone()
                                     for k, v in run.evaluated.state_dict().items()})
    if run.keep_state:
        save_state(run.state_path, {"model": run.model.state_dict(),
                                    **({"ema": run.ema.state_dict()} if run.ema else {}),
                                    "optimizer": run.opt.state_dict(),
                                    "scheduler": run.sched.state_dict(), "epoch": epoch,
                                    "best": run.sel.best, "stale": run.sel.stale,
                                    "history": run.history})
    # after the state: an epoch in history.csv is always one --resume can continue
    # (a signal during the state's write used to leave a row without its state)
    _write_history(run.out / "history.csv", run.history)
    if run.progress:
        print(f"epoch {epoch:3d}  loss {row['train_loss']:.4f}  val acc "
              f"{row['val_accuracy']:.4f}  macro F1 {row['val_macro_f1']:.4f}  "
              f"QWK {row['val_qwk']:.4f}{'  *' if improved else ''}", flush=True)


def _run_sidecar(run: _Run, metrics: dict, epoch: int) -> dict:
    return _sidecar(run.cfg, run.data, metrics, epoch, run.device, run.world)


def _fit(cfg: Config, out_dir, resume, progress, data, keep_state, deadline) -> dict:
    run = _setup(cfg, out_dir, resume, progress, data, keep_state)
    if resume:
        _restore(run)
    if run.rank == 0:
        (run.out / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg),
                                                            sort_keys=False))
    # SIGTERM and SIGINT both stop at once with the last completed epoch intact. SIGINT is
    # set explicitly because a process started in the background inherits it as ignored.
    old_handlers = {sig: signal.signal(sig, _sigterm_as_interrupt)
                    for sig in (signal.SIGTERM, signal.SIGINT)} \
        if run.rank == 0 and _in_main_thread() else {}
    t_start = time.perf_counter()
    try:
        for epoch in range(run.start, cfg.train.epochs + 1):
            if run.sel.stop:
                break
            if deadline is not None and run.history:
                if time.monotonic() + 1.2 * run.history[-1]["epoch_s"] > deadline:
                    raise DeadlineReached(f"epoch {epoch} would end after the deadline")
            _end_of_epoch(run, epoch, *_run_epoch(run, epoch))
        if run.held is not None:  # training is over: the model can take the selected weights
            epoch, metrics, weights = run.held
            run.model.load_state_dict(weights)
            save_checkpoint(run.best_path, run.model, _run_sidecar(run, metrics, epoch))
    finally:
        run.feed.close()
        for sig, handler in old_handlers.items():
            # None: the old handler was installed outside Python; the default is closest
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        if run.ddp:
            dist.destroy_process_group()
    return {"out": str(run.out), "epochs_run": len(run.history),
            "best_" + cfg.train.select_metric: run.sel.best,
            "history": run.history, "seconds": time.perf_counter() - t_start,
            "feed": run.feed.kind, "hardware": hardware_name(run.device)}


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
