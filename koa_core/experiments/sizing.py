"""Sizing a plan to the seconds left: a seconds-per-run model from measured epoch times, and
the runs of the plan, in its order of priority, that fit.

A run of ``E`` planned epochs is modelled as ``overhead_s + E * epoch_s``. ``epoch_s`` is the
steady epoch time (training and validation, epochs 2+) of the run's kind of model:
dual-stream (the proposed model and every dual row, which share its two trunks) or
single-stream (raw, CLAHE only; :data:`SINGLE_SPEEDUP` times faster when not measured).
``overhead_s`` is the rest of a run's wall time: building the model, the first epoch's
warm-up or compilation, writing the record. Early stopping can only shorten a run, so for
runs that stop early the model is an upper bound.

The runs that fit are a prefix of the plan: the first run that would not finish in the
seconds left ends the list, so a window that ends early leaves the plan's first stages whole
and no later run jumps ahead of an earlier one. Runs already recorded cost nothing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from koa_core.errors import KoaError

__all__ = ["SINGLE_SPEEDUP", "Rates", "SizedRun", "format_sizing", "kind", "size_plan",
           "sizing_json"]

SINGLE_SPEEDUP = 1.8  # single- vs dual-stream epoch time on one H100 (docs/gpu-campaign.md)


@dataclass
class Rates:
    """Seconds per epoch of each kind of model, and per run besides the epochs."""

    dual_epoch_s: float
    single_epoch_s: float | None = None  # None: dual_epoch_s / SINGLE_SPEEDUP
    overhead_s: float = 0.0
    source: str = "given"  # where the figures come from, in words

    def __post_init__(self) -> None:
        figures = [self.dual_epoch_s, self.overhead_s] + (
            [self.single_epoch_s] if self.single_epoch_s is not None else [])
        if self.dual_epoch_s <= 0 or min(figures) < 0:
            raise KoaError("sizing: seconds per epoch must be positive and the overhead >= 0")

    def epoch_s(self, model_kind: str) -> float:
        """Seconds per epoch of a ``dual`` or ``single`` stream model."""
        if model_kind == "dual":
            return self.dual_epoch_s
        return self.single_epoch_s if self.single_epoch_s is not None \
            else self.dual_epoch_s / SINGLE_SPEEDUP


@dataclass
class SizedRun:
    """One run of the plan, its modelled seconds and whether it is to train."""

    name: str
    stage: str
    kind: str  # dual | single
    epochs: int
    seconds: float  # modelled; 0 for a run already recorded
    ends_s: float  # modelled seconds from now until it ends, every run before it trained
    fits: bool
    recorded: bool = False


def kind(cfg) -> str:
    """``dual`` for a two-stream model, ``single`` for the raw or CLAHE-only rows."""
    return "dual" if cfg.model.streams == "dual" else "single"


def size_plan(runs, cfgs: dict, rates: Rates, seconds_left: float,
              recorded: set[str] = frozenset()) -> list[SizedRun]:
    """Every run of ``runs`` (plan order, :class:`~.campaign.PlanRun`) with its modelled
    seconds; ``fits`` marks the prefix that ends within ``seconds_left``."""
    out, clock, open_ = [], 0.0, True  # open_: every run so far fits
    for r in runs:
        cfg, done = cfgs[r.name], r.name in recorded
        k = kind(cfg)
        secs = 0.0 if done else rates.overhead_s + cfg.train.epochs * rates.epoch_s(k)
        clock += secs
        open_ = open_ and clock <= seconds_left
        out.append(SizedRun(r.name, r.stage, k, cfg.train.epochs, round(secs, 1),
                            round(clock, 1), open_, done))
    return out


def sizing_json(sized: list[SizedRun], rates: Rates, seconds_left: float) -> dict:
    """The sizing as written next to the records."""
    return {"seconds_left": round(seconds_left, 1), "rates": asdict(rates),
            "model": "seconds per run = overhead_s + epochs * epoch_s(kind); single-stream "
            f"epoch_s = dual_epoch_s / {SINGLE_SPEEDUP} unless measured",
            "runs": [asdict(s) for s in sized], "fit": [s.name for s in sized if s.fits]}


def format_sizing(sized: list[SizedRun], rates: Rates, seconds_left: float) -> str:
    """The sizing as printed: the per-run model, then one line per run."""
    fit = [s for s in sized if s.fits]
    lines = [f"sizing ({rates.source}): dual-stream {rates.epoch_s('dual'):.2f} s/epoch, "
             f"single-stream {rates.epoch_s('single'):.2f} s/epoch, overhead "
             f"{rates.overhead_s:.1f} s/run; {seconds_left:.0f} s left",
             f"{'run':<16} {'stage':<14} {'kind':<6} {'epochs':>6} {'s/run':>7} "
             f"{'ends at':>8}  fits"]
    for s in sized:
        note = "recorded" if s.recorded else ("yes" if s.fits else "no")
        lines.append(f"{s.name:<16} {s.stage:<14} {s.kind:<6} {s.epochs:>6} "
                     f"{s.seconds:>7.1f} {s.ends_s:>8.1f}  {note}")
    lines.append(f"sizing: {len(fit)} of {len(sized)} runs fit "
                 f"({sum(s.seconds for s in fit):.0f} s of {seconds_left:.0f} s)")
    return "\n".join(lines)
