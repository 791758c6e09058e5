"""A claim-by-claim scorecard of the paper (§3, abstract), computed from result records.

Each claim of the paper (:data:`koa_core.paper.CLAIMS`) is set beside our value, its
per-seed values, a seed-aware 95 % interval (:mod:`.intervals`) and the verdict of
:func:`.verdicts.judge`, as one typed :class:`Claim`: the landing page, ``koa ablation``,
``koa levers`` and the tests read its fields, never its sentence. The claims:

* headline values (abstract, Tables 3-5) and per-grade precision, recall and F1 of
  Tables 3 (raw only) and 4 (proposed), each in the direction the paper claims it;
* Table 5's steps as seed-paired differences, an accuracy and a macro-F1 claim each; the
  two rows of ours that separate the gate from cross-attention (:data:`OURS`);
* the text's KL3 confusion (over 40 % called KL2 or KL4) and the gate's leaning.

What the records say of how the runs were trained decides before any interval does
(:mod:`.groups`): a row that needs the raw radiograph, on a copy enhanced upstream, is not
testable; an arm with fewer than three seeds has too few; a step whose arms were trained
differently is confounded; a shortfall lists our deviations from the paper.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from koa_core.experiments.groups import confounders, deviations, enhanced
from koa_core.experiments.intervals import Estimate, seed_difference, seed_figure
from koa_core.experiments.verdicts import (
    CONFOUNDED,
    NOT_COMPARABLE,
    NOT_REPRODUCED,
    NOT_TESTABLE,
    TOO_FEW_SEEDS,
    Evidence,
    judge,
    paper_error,
    tolerance,
)
from koa_core.metrics.classification import Z95, wilson
from koa_core.paper import AT_LEAST, PaperClaim
from koa_core.paper import CLAIMS as PAPER_CLAIMS

__all__ = ["Claim", "OURS", "SECTIONS", "compare", "judge_claims", "needs_raw"]

SECTIONS = ("headline", "per grade", "table 5", "text")
# rows of ours that the paper never claimed: (better, worse, what it tests)
OURS = (("dual-gate", "dual-noattn", "the learned gate alone (no cross-attention)"),
        ("proposed", "dual-gate", "cross-attention on top of the learned gate"))
# configurations that see one view of the knee: a claim about them is about the raw
# radiograph or its CLAHE view alone
SINGLE_STREAM = frozenset({"raw", "clahe"})


@dataclass(frozen=True)
class Claim:
    """One judged claim. ``paper``: the printed figure (None for a row of ours);
    ``ours``: our mean over seeds, ``ci`` its 95 % interval, ``per_seed`` each seed's
    figure (for a step, each seed's difference), all in the paper's units (percent where
    ``scale`` is 100); ``gap_ci``: the interval of ours minus the paper's; ``reason``:
    what decided the word (the deviations of a shortfall, what confounds a step)."""

    key: str
    text: str
    section: str
    source: str
    kind: str
    metric: str
    grade: int | None
    configs: tuple[str, ...]
    direction: str
    paper: float | None
    paper_support: int
    paper_ci: tuple[float, float] | None
    ours: float
    ci: tuple[float, float]
    knee_ci: tuple[float, float]
    per_seed: tuple[float, ...]
    seeds: tuple[int, ...]
    gap: float | None
    gap_ci: tuple[float, float] | None
    tolerance: float | None
    verdict: str
    reason: str
    deviations: tuple[str, ...] = ()
    confounders: tuple[str, ...] = ()
    scale: float = 1.0

    @property
    def paper_inside(self) -> bool | None:
        """Whether the paper's figure lies inside our interval (None: no figure)."""
        return None if self.paper is None else self.ci[0] <= self.paper <= self.ci[1]


def needs_raw(configs, metric: str) -> bool:
    """A claim about what the raw radiograph or its CLAHE view does alone."""
    return bool(SINGLE_STREAM & set(configs)) or metric == "gate_lean"


def _reason(word: str, seeds: dict[str, int], copy: str | None, devs, conf) -> str:
    if word == NOT_TESTABLE:
        return f"trained on the {copy} copy: its raw stream saw an enhanced image"
    if word == TOO_FEW_SEEDS:
        return "seeds: " + ", ".join(f"{c} {n}" for c, n in seeds.items())
    if word == CONFOUNDED:
        return "; ".join(conf)
    if word in (NOT_REPRODUCED, NOT_COMPARABLE):
        return "; ".join(devs)
    return ""


def _paper_ci(p: PaperClaim) -> tuple[float, float]:
    """The paper's own 95 % interval: Wilson on its test support for a proportion of
    knees, the binomial approximation for an F1."""
    v, n, s = p.paper.value, p.paper.support, p.scale
    if p.metric in ("accuracy", "recall", "precision"):
        lo, hi = wilson(v / s, n)
        return (s * lo, s * hi)
    e = Z95 * paper_error(v, n, s)
    return (v - e, v + e)


def _scaled(est: Estimate, s: float) -> dict:
    return {"ours": s * est.value, "ci": (s * est.ci[0], s * est.ci[1]),
            "knee_ci": (s * est.knee_ci[0], s * est.knee_ci[1]),
            "per_seed": tuple(s * v for v in est.per_seed), "seeds": est.seed_ids}


def _gap(p: PaperClaim, ours: dict) -> tuple[float, float, float]:
    """Ours minus the paper's, and its interval: each side of ours and the paper's own
    interval added in quadrature (square-and-add)."""
    pv, (plo, phi) = p.paper.value, _paper_ci(p)
    gap = ours["ours"] - pv
    return (gap, float(gap - np.hypot(ours["ours"] - ours["ci"][0], phi - pv)),
            float(gap + np.hypot(ours["ci"][1] - ours["ours"], pv - plo)))


def _explained(p: PaperClaim, variants: dict[str, dict[int, dict]]) -> str | None:
    """A deviation that a record measures to explain the gap: a variant of the claim's
    configuration without that deviation, with enough seeds, that is not short of the
    paper."""
    for deviation, runs in variants.items():
        _, lo, hi = _gap(p, _scaled(seed_figure(runs, p.figure), p.scale))
        e = Evidence("value", lo, hi, len(runs), p.direction,
                     tolerance(p.paper.value, p.paper.support, p.scale))
        if judge(e) not in (NOT_REPRODUCED, TOO_FEW_SEEDS):
            return f"{deviation}: without it, {len(runs)} seeds reach the paper"
    return None


def _value(p: PaperClaim, runs: dict[int, dict],
           variants: dict[str, dict[int, dict]] | None = None) -> Claim:
    s = p.scale
    ours = _scaled(seed_figure(runs, p.figure), s)
    pv, (plo, phi) = p.paper.value, _paper_ci(p)
    gap, lo, hi = _gap(p, ours)
    tol = tolerance(pv, p.paper.support, s)
    copy = runs[min(runs)].get("copy")
    devs = deviations(runs)
    e = Evidence("value", lo, hi, len(runs), p.direction, tol,
                 needs_raw(p.configs, p.metric), enhanced(copy))
    if judge(e) == NOT_REPRODUCED and variants:
        e = replace(e, explained_by=_explained(p, variants))
    word = judge(e)
    return Claim(p.key, p.text, p.section, p.paper.source, "value", p.metric, p.grade,
                 p.configs, p.direction, pv, p.paper.support, (plo, phi), **ours, gap=gap,
                 gap_ci=(float(lo), float(hi)), tolerance=tol, verdict=word,
                 reason=e.explained_by if word == NOT_COMPARABLE else
                 _reason(word, {p.configs[0]: len(runs)}, copy, devs, ()),
                 deviations=devs, scale=s)


def compare(key: str, text: str, a: dict[int, dict], b: dict[int, dict], metric: str,
            kind: str, names: tuple[str, str], section: str = "table 5",
            source: str = "ours", paper: float | None = None,
            estimate: Estimate | None = None) -> Claim:
    """``a`` minus ``b`` on ``metric``, paired by seed (or as ``estimate`` gives it: a
    one-seed lever against a baseline's mean), judged as a step the paper claims (``kind``
    difference) or a row of ours (``ours``). Used for Table 5's steps, the gate rows, the
    levers of chapter 8 and the post-hoc levers."""
    s = 100.0 if metric == "accuracy" else 1.0
    est = estimate or seed_difference(a, b, metric)
    ours = _scaled(est, s)
    conf = confounders(a, b)
    copies = {r.get("copy") for r in (*a.values(), *b.values())}
    copy = next((c for c in sorted(copies, key=str) if enhanced(c)), None)
    e = Evidence(kind, ours["ci"][0], ours["ci"][1], min(len(a), len(b)), AT_LEAST, 0.0,
                 needs_raw(names, metric), copy is not None, conf)
    word = judge(e)
    return Claim(key, text, section, source, kind, metric, None, names, AT_LEAST, paper,
                 0, None, **ours, gap=None, gap_ci=None, tolerance=None, verdict=word,
                 reason=_reason(word, {names[0]: len(a), names[1]: len(b)}, copy, (), conf),
                 confounders=conf, scale=s)


def _steps(groups: dict) -> list[Claim]:
    out = []
    steps = [(p, *p.configs) for p in PAPER_CLAIMS if p.kind == "difference"]
    steps += [(None, a, b, what) for a, b, what in OURS]
    for step in steps:
        p, a, b = step[:3]
        if a not in groups or b not in groups:
            continue
        what = p.text.rsplit(" (", 1)[0] if p else step[3]
        for metric in ("accuracy", "macro_f1"):
            unit = "accuracy points" if metric == "accuracy" else "macro F1"
            out.append(compare(f"steps/{metric}/{a}-{b}" if p else f"ours/{metric}/{a}-{b}",
                               f"{what} ({a} - {b}, {unit})", groups[a], groups[b], metric,
                               "difference" if p else "ours", (a, b),
                               source=p.paper.source if p else "ours",
                               paper=p.paper.value if p and metric == "accuracy" else None))
    return out


def _kl3_off(run: dict, idx: np.ndarray) -> np.ndarray:
    y, pred = np.asarray(run["grade"])[idx], np.asarray(run["pred"])[idx]
    kl3 = y == 3
    off = kl3 & ((pred == 2) | (pred == 4))
    return off.sum(1) / np.maximum(kl3.sum(1), 1)


def _gate_lean(run: dict, idx: np.ndarray) -> np.ndarray:
    g, late = np.asarray(run["gate_raw"])[idx], (np.asarray(run["grade"]) >= 3)[idx]
    return ((g * late).sum(1) / np.maximum(late.sum(1), 1)
            - (g * ~late).sum(1) / np.maximum((~late).sum(1), 1))


def _text(groups: dict) -> list[Claim]:
    if "proposed" not in groups:
        return []
    runs = groups["proposed"]
    out = []
    p = next(c for c in PAPER_CLAIMS if c.metric == "kl3_off")
    n3 = float((np.asarray(runs[min(runs)]["grade"]) == 3).sum())
    gated = {s: v for s, v in runs.items() if v.get("gate_raw") is not None}
    for claim, f, these, bounds, den in (
            (p, _kl3_off, runs, (0.0, 1.0), n3),
            (next(c for c in PAPER_CLAIMS if c.metric == "gate_lean"), _gate_lean, gated,
             (-1.0, 1.0), None)):
        if not these:
            continue
        est = seed_figure(these, f, bounds=bounds, denominator=den)
        ref = claim.paper.value
        copy = these[min(these)].get("copy")
        e = Evidence("threshold", est.ci[0] - ref, est.ci[1] - ref, len(these), AT_LEAST,
                     0.0, needs_raw(claim.configs, claim.metric), enhanced(copy))
        word = judge(e)
        out.append(Claim(claim.key, claim.text, "text", claim.paper.source, "threshold",
                         claim.metric, None, claim.configs, AT_LEAST, ref, 0, None,
                         **_scaled(est, 1.0), gap=est.value - ref, gap_ci=(e.lo, e.hi),
                         tolerance=None, verdict=word,
                         reason=_reason(word, {"proposed": len(these)}, copy, (), ())))
    return out


def judge_claims(groups: dict[str, dict[int, dict]], sections: tuple = SECTIONS,
                 variants: dict[str, dict[str, dict[int, dict]]] | None = None
                 ) -> list[Claim]:
    """Every claim of ``sections`` that the records of ``groups`` ({configuration: {seed:
    run}}, :func:`.groups.load_groups`) can test, judged. ``variants``: {configuration:
    {deviation: runs of that configuration without the deviation}}, the records that can
    show a deviation explains a shortfall (``not comparable``)."""
    variants = variants or {}
    out = [_value(p, groups[p.configs[0]], variants.get(p.configs[0])) for p in PAPER_CLAIMS
           if p.kind == "value" and p.section in sections and p.configs[0] in groups]
    if "table 5" in sections:
        out += _steps(groups)
    if "text" in sections:
        out += _text(groups)
    return out
