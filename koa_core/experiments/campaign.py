"""Campaigns: many training runs in one process, each leaving a record (paper §3.2, Table 5).

``koa campaign PLAN.yaml --data ROOT --runs DIR --records DIR`` trains a plan's
configurations x seeds one after another on data loaded once, writes each run's record
(:mod:`.records`) the moment the run ends, and skips runs whose record is already
complete, so a campaign cut off by a time limit loses only the run in progress and a
second call carries on. A plan is YAML::

    description: Table 5 from scratch, three seeds
    profiles: [paper]                 # bundled profiles or YAML files, stacked first
    set: [model.pretrained=none]      # --set overrides for every run
    stages:                           # in order; within a stage, seed by seed
      - name: table5
        seeds: [1, 2, 3]
        runs:
          - {name: clahe, configs: [ablation-clahe]}
          - {name: proposed, configs: [ablation-proposed], set: [train.lr=0.001]}

A run is named ``NAME-sSEED``; its seed sets ``train.seed`` and ``augment.seed``.

With ``size_to`` (``--size FILE``) and a time limit the plan is first sized
(:mod:`.sizing`): a short timed probe of its first dual-stream and first single-stream run on
this machine and data (or figures given as ``rates``) gives seconds per run; the sizing is
printed and written to FILE, and only the prefix of the plan that fits is trained.

Every record names the copy of the images it trained on (``data.copy``,
:mod:`koa_core.experiments.datacopy`): ``data_copy`` (``--data-copy``) is required with a data root,
and the phantom names itself. A records folder holds one copy: a campaign whose copy
differs from a finished record's there, or meets a record that names none, is refused
before anything trains.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from koa_core.config import config_from_dict, load_config
from koa_core.data.cache import views_digest
from koa_core.errors import KoaError
from koa_core.experiments.copies import COPY_HELP, PHANTOM, parse_copy
from koa_core.experiments.records import (
    PROVENANCE,
    check_record,
    find_records,
    predictions_table,
    read_record,
    record_copy,
    run_name,
    split_run_name,
    write_record,
)
from koa_core.experiments.sizing import (
    SINGLE_SPEEDUP,
    Rates,
    format_sizing,
    kind,
    size_plan,
    sizing_json,
)
from koa_core.infer.backends import predict_views
from koa_core.locking import FolderLock
from koa_core.model.checkpoint import load_checkpoint
from koa_core.runtime import amp_dtype, code_commit, machine_info, resolve_device
from koa_core.train.dataset import KneeDataset
from koa_core.train.engine import DeadlineReached, fit, prepare_data, train_augment
from koa_core.train.runs import read_run
from koa_core.train.selection import LAST

__all__ = ["PlanRun", "load_plan", "record_run", "resolve_copy", "run_campaign", "select_run"]


@dataclass
class PlanRun:
    name: str  # NAME-sSEED
    group: str  # NAME
    stage: str
    seed: int
    configs: list[str] = field(default_factory=list)
    sets: list[str] = field(default_factory=list)


def _strings(value, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) for v in value):
        raise KoaError(f"{where}: expected a list of strings")
    return [str(v) for v in value]


def load_plan(path: str | Path) -> tuple[dict, list[PlanRun]]:
    """The plan's header and its runs in order; a bundled plan may be named without .yaml."""
    p = Path(path)
    if not p.exists():
        bundled = Path(__file__).resolve().parents[1] / "plans" / f"{path}.yaml"
        if not bundled.exists():
            raise KoaError(f"plan not found: {path}")
        p = bundled
    try:
        plan = yaml.safe_load(p.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise KoaError(f"{p}: not a readable YAML plan ({str(exc).splitlines()[0]})") from None
    if not isinstance(plan, dict) or not isinstance(plan.get("stages"), list):
        raise KoaError(f"{p}: a plan needs a list of stages")
    base_cfgs = _strings(plan.get("profiles"), f"{p}: profiles")
    base_sets = _strings(plan.get("set"), f"{p}: set")
    runs: list[PlanRun] = []
    for i, stage in enumerate(plan["stages"]):
        where = f"{p}: stage {i + 1}"
        if not isinstance(stage, dict) or not isinstance(stage.get("runs"), list):
            raise KoaError(f"{where}: needs a list of runs")
        seeds = stage.get("seeds", [42])
        if not isinstance(seeds, list) or not seeds or not all(
                isinstance(s, int) and not isinstance(s, bool) for s in seeds):
            raise KoaError(f"{where}: seeds must be a list of integers")
        for seed in seeds:
            for r in stage["runs"]:
                if not isinstance(r, dict) or not str(r.get("name", "")).strip():
                    raise KoaError(f"{where}: every run needs a name")
                name = str(r["name"]).strip()
                if not name.replace("-", "").replace("_", "").isalnum():
                    raise KoaError(f"{where}: run name {name!r}: letters, digits, - and _")
                runs.append(PlanRun(
                    name=run_name(name, seed), group=name, stage=str(stage.get("name", i + 1)),
                    seed=seed, configs=base_cfgs + _strings(r.get("configs"), where),
                    sets=base_sets + _strings(r.get("set"), where)
                    + [f"train.seed={seed}", f"augment.seed={seed}"]))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise KoaError(f"{p}: a run name repeats within a seed")
    return plan, runs


def _data_key(cfg) -> tuple:
    return (repr(cfg.data), repr(cfg.preprocess), cfg.augment.enabled, cfg.train.seed
            if cfg.data.subset else None)


def _with_augment(data, cfg):
    """``data`` with a training set augmented by the run's own seed (views shared)."""
    out = copy.copy(data)
    out.train = KneeDataset(data.train.records, data.train.views, train_augment(cfg))
    return out


@dataclass
class CampaignOptions:
    """How :func:`run_campaign` runs a plan (``koa campaign``'s options)."""

    time_limit: float | None = None  # seconds: no epoch starts that would end later
    data_encoding: str = "as stored"  # how the data copy was encoded, for the records
    data_name: str | None = None  # the dataset's name, for the records
    data_copy: str | None = None  # which copy of the images (required with a data root)
    only: list[str] | None = None  # only these runs (NAME or NAME-sSEED)
    overrides: list[str] | None = None  # section.key=value for every run, after the plan's
    progress: bool = False
    command: str | None = None  # for the provenance (default: this process's command line)
    echo: object = print
    size_to: str | Path | None = None  # size the plan to the time limit; the sizing's file
    rates: Rates | None = None  # given figures for the sizing (None: a timed probe)
    size_only: bool = False  # size, and train nothing
    probe_epochs: int = 2  # epochs of each timed probe (the steady epoch is the 2nd on)


def run_campaign(plan_path: str | Path, data_root: str | Path | None, runs_dir: str | Path,
                 records_dir: str | Path, options: CampaignOptions | None = None,
                 **settings) -> dict:
    """Train the plan's runs that lack a complete record; returns what was done.
    ``options`` (or its fields as keywords): :class:`CampaignOptions`; the data copy is
    required unless every run trains on the phantom (:mod:`.datacopy`)."""
    o = dataclasses.replace(options or CampaignOptions(), **settings)
    t_begin = time.monotonic()
    deadline = t_begin + o.time_limit if o.time_limit else None
    plan, runs = load_plan(plan_path)
    if o.only:
        unknown = set(o.only) - {r.group for r in runs} - {r.name for r in runs}
        if unknown:
            raise KoaError(f"--only: no run named {', '.join(sorted(unknown))} in the plan")
        runs = [r for r in runs if r.group in o.only or r.name in o.only]
    runs_dir, records_dir = Path(runs_dir), Path(records_dir)
    cfgs = {}
    for r in runs:  # every config resolves before any data is read
        sets = list(r.sets) + list(o.overrides or []) \
            + ([f"data.root={data_root}"] if data_root else [])
        cfgs[r.name] = load_config(r.configs, sets)
    data_copy = resolve_copy(o.data_copy, all(c.data.root is None for c in cfgs.values()))
    with FolderLock(runs_dir, "running a campaign"), \
            FolderLock(records_dir, "writing records"):
        _check_copies(records_dir, runs, data_copy)
        camp = _Campaign(plan_path, runs_dir, records_dir, deadline, t_begin, o.progress, o.echo,
                         o.command or shlex.join(sys.argv), code_commit(),
                         {"data_encoding": o.data_encoding, "data_name": o.data_name,
                          "data_copy": data_copy})
        if o.size_to is not None:
            runs = _size(camp, runs, cfgs, o)
            if o.size_only:
                return {"done": [], "skipped": [], "stopped": None, "remaining": [],
                        "sized": [r.name for r in runs],
                        "seconds": time.monotonic() - camp.t_begin}
        return _run(camp, runs, cfgs)


def _size(camp: _Campaign, runs: list[PlanRun], cfgs: dict, o: CampaignOptions) -> list:
    """Size the plan to the seconds left (:mod:`.sizing`), write and print the sizing;
    the runs that fit, in plan order."""
    if camp.deadline is None:
        raise KoaError("--size needs --time-limit: the seconds the plan is sized to")
    recorded = {r.name for r in runs if not check_record(camp.records_dir / r.name)}
    todo = [r for r in runs if r.name not in recorded]
    if not todo:
        return runs  # every run is recorded: nothing to measure or size
    rates = o.rates or _measure(camp, todo, cfgs, o.probe_epochs)
    left = camp.deadline - time.monotonic()
    sized = size_plan(runs, cfgs, rates, left, recorded)
    out = Path(o.size_to)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(sizing_json(sized, rates, left), indent=1) + "\n")
    camp.echo(format_sizing(sized, rates, left))
    fit = {s.name for s in sized if s.fits}
    return [r for r in runs if r.name in fit]


def _measure(camp: _Campaign, runs: list[PlanRun], cfgs: dict, epochs: int) -> Rates:
    """Time an ``epochs``-epoch probe of the first dual-stream and the first single-stream
    run of ``runs`` on this machine and data, record included (data preparation not); the
    probes' folders are removed after."""
    probe_dir = camp.runs_dir / ".probe"
    probe = dataclasses.replace(camp, runs_dir=probe_dir, records_dir=probe_dir / "records",
                                deadline=None)
    figures, notes = {}, []
    try:
        for k in ("dual", "single"):
            r = next((r for r in runs if kind(cfgs[r.name]) == k), None)
            if r is None:
                continue
            cfg = copy.deepcopy(cfgs[r.name])
            cfg.train.epochs = cfg.train.patience = epochs
            _data_for(probe, cfg)
            t0 = time.perf_counter()
            hist = _train_and_record(probe, dataclasses.replace(r, stage="probe"), cfg)
            total = time.perf_counter() - t0
            steady = float(np.median([h["epoch_s"] for h in hist[1:] or hist]))
            figures[k] = (steady, max(0.0, total - len(hist) * steady))
            notes.append(f"{r.name} {len(hist)} epochs in {total:.1f} s")
    finally:
        shutil.rmtree(probe_dir, ignore_errors=True)
    dual = figures["dual"][0] if "dual" in figures else None
    single = figures["single"][0] if "single" in figures else None
    return Rates(dual_epoch_s=dual or single * SINGLE_SPEEDUP, single_epoch_s=single,
                 overhead_s=round(max(f[1] for f in figures.values()), 2),
                 source="measured on this machine: " + ", ".join(notes))


def resolve_copy(data_copy: str | None, phantom: bool) -> str:
    """The canonical copy name for records: given (checked), or the phantom's own."""
    if data_copy is None:
        if phantom:
            return PHANTOM
        raise KoaError(f"--data-copy is required with a data root: {COPY_HELP}; every "
                       "record names it")
    data_copy = parse_copy(data_copy)
    if phantom and data_copy != PHANTOM:
        raise KoaError(f"--data-copy {data_copy}: these runs train on the synthetic phantom "
                       "(no data root), whose copy is 'phantom'")
    return data_copy


def _check_copies(records_dir: Path, runs: list[PlanRun], data_copy: str) -> None:
    """Refuse, before anything trains, a records folder whose finished records name
    another copy, or none (records from before ``data.copy``: ``koa stamp`` them)."""
    for r in runs:
        rec = records_dir / r.name
        if not (rec / PROVENANCE).exists() or check_record(rec, require_copy=False):
            continue  # absent or incomplete: trained again
        copy = record_copy(json.loads((rec / PROVENANCE).read_text()))
        if copy is None:
            raise KoaError(f"{rec}: a finished record that names no data copy; name it with "
                           f"`koa stamp {records_dir} --data ROOT` (checked against its "
                           "validation views) before this campaign adds to the folder")
        if copy != data_copy:
            raise KoaError(f"{rec}: trained on the {copy} copy, this campaign on the "
                           f"{data_copy} copy; one records folder holds one copy: use "
                           "another --records folder")


@dataclass
class _Campaign:
    """What every run of one campaign shares: where it writes, its clock, its provenance."""

    plan_path: str | Path
    runs_dir: Path
    records_dir: Path
    deadline: float | None
    t_begin: float
    progress: bool
    echo: object
    command: str
    commit: str
    data: dict  # data_encoding, data_name, data_copy for every record
    loaded: dict = field(default_factory=dict)  # one prepared dataset at a time
    epoch_s: dict = field(default_factory=dict)  # per architecture: median s per epoch


def _run(camp: _Campaign, runs: list[PlanRun], cfgs: dict) -> dict:
    done, skipped, stopped = [], [], None
    for r in runs:
        if not check_record(camp.records_dir / r.name):
            skipped.append(r.name)
            continue
        cfg = cfgs[r.name]
        arch = repr(cfg.model)
        if camp.deadline is not None and arch in camp.epoch_s \
                and time.monotonic() + camp.epoch_s[arch] * cfg.train.epochs > camp.deadline:
            # a shorter run later in the plan may still fit
            stopped = f"{r.name} would not finish within the time limit"
            continue
        try:
            _train_and_record(camp, r, cfg)
        except DeadlineReached as exc:
            shutil.rmtree(camp.runs_dir / r.name, ignore_errors=True)
            stopped = f"{r.name} stopped: {exc}"
            break
        done.append(r.name)
    return {"done": done, "skipped": skipped, "stopped": stopped,
            "remaining": [r.name for r in runs if r.name not in done and r.name not in skipped],
            "seconds": time.monotonic() - camp.t_begin}


def _data_for(camp: _Campaign, cfg):
    """The prepared data of ``cfg``, prepared now unless the campaign holds it already."""
    key = _data_key(cfg)
    if key not in camp.loaded:
        camp.loaded.clear()  # one dataset in memory at a time
        t0 = time.perf_counter()
        camp.loaded[key] = prepare_data(cfg, progress=camp.progress)
        camp.echo(f"data: {camp.loaded[key].counts} prepared in "
                  f"{time.perf_counter() - t0:.1f} s")
    return camp.loaded[key]


def _train_and_record(camp: _Campaign, r: PlanRun, cfg) -> list[dict]:
    """Train one run of the plan on the campaign's data and write its record; its history."""
    data = _with_augment(_data_for(camp, cfg), cfg)
    run_dir = camp.runs_dir / r.name
    shutil.rmtree(run_dir, ignore_errors=True)  # an unfinished earlier attempt
    camp.echo(f"run {r.name} ({r.stage}): {' '.join(r.configs)}")
    t0 = time.perf_counter()
    summary = fit(cfg, run_dir, progress=camp.progress, data=data, keep_state=False,
                  deadline=camp.deadline)
    wall = time.perf_counter() - t0
    hist = summary["history"]
    camp.epoch_s[repr(cfg.model)] = float(np.median([h["epoch_s"] for h in hist[1:] or hist]))
    record_run(run_dir, camp.records_dir / r.name, data, command=camp.command,
               commit=camp.commit, wall_s=wall, **camp.data,
               extra={"name": r.name, "group": r.group, "stage": r.stage, "seed": r.seed,
                      "plan": Path(camp.plan_path).name, "feed": summary["feed"]})
    metric = cfg.train.select_metric
    best = (f"last val macro_f1 {hist[-1]['val_macro_f1']:.3f}" if metric == LAST else
            f"best val {metric} {max(h[f'val_{metric}'] for h in hist):.3f}")
    rate = np.median([h["train_img_s"] for h in hist[1:] or hist])
    camp.echo(f"  {r.name}: {summary['epochs_run']} epochs in {wall:.0f} s, "
              f"{rate:.0f} img/s, {best}")
    return hist


@dataclass
class RecordInfo:
    """What a record says of where it came from, besides what the run folder holds."""

    command: str = ""
    commit: str | None = None  # None: the code's own (runtime.code_commit)
    data_encoding: str = "as stored"
    data_name: str | None = None  # None: the data root's folder name
    data_copy: str | None = None  # required: which copy of the images (experiments.copies)
    wall_s: float | None = None  # None: the sum of the history's epoch times
    extra: dict | None = None  # more provenance keys (name, group, stage, seed, plan, feed)


def record_run(run_dir: str | Path, into: str | Path, data, info: RecordInfo | None = None,
               **settings) -> Path:
    """Write the record of a finished run folder: its selected checkpoint's predictions on
    ``data.val`` (prepared with the run's config) and the provenance (``info``, or its
    fields as keywords: :class:`RecordInfo`). Images/s is the median over epochs 2+."""
    import torch

    info = dataclasses.replace(info or RecordInfo(), **settings)
    if info.data_copy is None:
        raise KoaError(f"record {Path(into).name}: name the data copy ({COPY_HELP})")
    data_copy = parse_copy(info.data_copy)

    run = read_run(run_dir, need=("config", "history", "best"))
    cfg = config_from_dict(run["config"], origin=str(run_dir))
    hist = run["history"]
    rates = [float(h["train_img_s"]) for h in hist[1:] or hist]
    device = resolve_device()
    model, _ = load_checkpoint(Path(run_dir) / "best.safetensors", device)
    model = model.to(memory_format=torch.channels_last)
    dtype = amp_dtype(cfg.train.amp, device)
    views = data.val.views
    probs, gates = predict_views(model, views, 512, device, dtype, channels_last=True)
    # flip TTA = the mean with the mirror's prediction: only the mirror needs a forward pass
    mirror = views.flip(-1) if isinstance(views, torch.Tensor) else views[..., ::-1]
    probs_flip = (probs + predict_views(model, mirror, 512, device, dtype,
                                        channels_last=True)[0]) / 2
    prov = {
        "name": Path(into).name, **(info.extra or {}), "commit": info.commit or code_commit(),
        "command": info.command, "machine": machine_info(device),
        "data": {"name": info.data_name or Path(data.root).name, "copy": data_copy,
                 "train_counts": data.counts["train"], "val_counts": data.counts["val"],
                 "encoding": info.data_encoding, "val_views_blake2b": views_digest(data.val.views)},
        "epochs_run": len(hist),
        "wall_s": round(info.wall_s if info.wall_s is not None
                        else sum(float(h["epoch_s"]) for h in hist), 2),
        "train_img_s": round(float(np.median(rates)), 1),
    }
    return write_record(into, run_dir, predictions_table(data.val.records, probs, gates,
                                                         data.root, probs_flip), prov)


def select_run(records_dir: str | Path, min_recall: float = 0.3,
               metric: str = "macro_f1", group: str | None = None) -> dict:
    """The shipped-checkpoint rule: the best validation ``metric`` among records whose
    every grade has validation recall >= ``min_recall`` (and, with ``group``, only the runs
    of that plan row: records named ``GROUP-sSEED``). Returns the record's name and
    figures, and how many records were eligible."""
    best, eligible, total = None, 0, 0
    for path in find_records(records_dir):
        rec = read_record(path)
        row, seed = split_run_name(rec["name"])
        if group is not None and (row != group or seed is None):
            continue
        m = rec["selected"]["val_metrics"]
        total += 1
        recalls = [m["per_class"][str(g)]["recall"] for g in range(5)]
        if min(recalls) < min_recall:
            continue
        eligible += 1
        if best is None or m[metric] > best["metrics"][metric]:
            best = {"name": rec["name"], "metrics": m, "min_recall": min(recalls)}
    runs = f"runs named {group}-sSEED" if group is not None else "runs"
    if best is None:
        raise KoaError(f"{records_dir}: none of {total} records of {runs} has every grade's "
                       f"validation recall >= {min_recall}")
    return {**best, "eligible": eligible, "records": total, "rule":
            f"best validation {metric} among {runs} whose every grade has recall >= "
            f"{min_recall}"}
