"""The paper's printed figures, in one place: everything the project compares against.

Copied as printed, slips included (each slip is named where it is kept). Every module that
sets a figure of ours beside the paper's reads it here, and so does the scorecard's list of
claims (:data:`CLAIMS`): the headline figures (abstract, Table 4), the raw-only baseline
(Table 3), the ablation (Table 5) and its claimed steps (§3.2), Table 2's loss weights, the
class counts of Table 1 and Fig. 1, Table 7 and the text's KL3 statement (§3.1b).

One key scheme for every figure (:data:`FIGURES`, :func:`printed`):
``"<where>/<what>[/<of what>]"``, e.g. ``table4/recall/KL4``, ``table5/accuracy/proposed``,
``table1/train/KL0``, ``table2/alpha/KL4``, ``steps/accuracy/proposed-dual-noattn``,
``text/kl3_off/proposed``. Each :class:`Printed` names its table or section and the number
of test knees behind it (its support; 0 where the figure is not measured on knees).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ABOUT", "ALPHA", "AT_LEAST", "AT_MOST", "CLAIMS", "FIG1_COUNTS", "FIGURES", "GATE_LEAN",
           "KL",
           "KL3_OFF", "PROPORTIONS", "PaperClaim", "Printed", "STEPS", "TABLE1",
           "TABLE2_COUNTS", "TABLE2_SHARES_PCT", "TABLE3", "TABLE4", "TABLE5", "TABLE7",
           "TEST_KNEES", "printed"]

KL = tuple(f"KL{g}" for g in range(5))

# Table 1: images per split and grade (5,778 / 826 / 1,656; 8,260 in all).
TABLE1 = {"train": (2286, 1046, 1516, 757, 173), "val": (328, 153, 212, 106, 27),
          "test": (639, 296, 447, 223, 51)}
TEST_KNEES = sum(TABLE1["test"])  # 1,656 (Table 4's 1,657 is one of its slips)

# Fig. 1: images per grade in the whole dataset (sums to 10,286).
FIG1_COUNTS = (3857, 1770, 2578, 1786, 295)

# KL0..KL4 class proportions of the paper's dataset (§2.1, Table 2's "before" shares).
PROPORTIONS = (0.394, 0.181, 0.263, 0.131, 0.030)

# Table 2: per-class alpha of the weighted focal loss, the training images per grade
# (9,786 in all) and the "effective gradient influence share" (percent) after alpha and
# gamma. KL3 is 1,286 here but 1,086 in Table 1 and 1,786 in Fig. 1; 1,286 is the value
# that agrees with Table 2's own percentage (13.14 %) and total (9,786).
ALPHA = (0.133, 0.267, 0.133, 0.133, 0.333)
TABLE2_COUNTS = (3857, 1770, 2578, 1286, 295)
TABLE2_SHARES_PCT = (19.5, 18.0, 12.8, 6.5, 37.2)

# Tables 3 (raw only) and 4 (proposed), test split: per grade (precision, recall, F1,
# support), then (accuracy, n), macro and weighted (precision, recall, F1).
TABLE3 = {"per_class": [(0.6469, 0.8858, 0.7477, 639), (0.6805, 0.5541, 0.6108, 296),
                        (0.6065, 0.5034, 0.5501, 447), (0.9111, 0.3677, 0.5240, 223),
                        (0.5190, 0.8039, 0.6308, 51)],
          "accuracy": (0.6510, 1656), "macro": (0.6728, 0.6230, 0.6127),
          "weighted": (0.6736, 0.6510, 0.6362)}
TABLE4 = {"per_class": [(0.7607, 0.8607, 0.8076, 639), (0.7675, 0.5912, 0.6679, 296),
                        (0.6732, 0.6897, 0.6814, 448), (0.7643, 0.5381, 0.6316, 223),
                        (0.4444, 0.7843, 0.5674, 51)],
          "accuracy": (0.7206, 1657), "macro": (0.6820, 0.6928, 0.6712),
          "weighted": (0.7290, 0.7206, 0.7175)}

# Table 5: test accuracy (%) per configuration.
TABLE5 = {"clahe": 61.84, "raw": 65.10, "dual-noattn": 70.47, "proposed": 72.06}

# The steps the paper claims (§3.2 and the conclusion): (better, worse, accuracy points,
# what it tests). The paper claims each step helps: the better configuration is at least
# as accurate.
STEPS = (("raw", "clahe", 3.26, "raw-only beats CLAHE-only"),
         ("dual-noattn", "raw", 5.37, "dual stream (no attention) beats raw-only"),
         ("proposed", "dual-noattn", 1.59, "cross-attention + gate beat the plain dual stream"),
         ("proposed", "raw", 6.96, "the proposed model beats the raw-only baseline"))

# Table 7: (method, accuracy %, F1).
TABLE7 = (("VGG-19 + ordinal loss [19]", 69.7, 0.68), ("ResNet-101 [20]", 69.0, 0.65),
          ("InceptionV3 [21]", 67.0, 0.66), ("DenseNet-121 [22]", 71.0, 0.70),
          ("Proposed (dual + cross-attention)", 72.06, 0.67))

# §3.1b: "Class 3 remained difficult to identify accurately, with over 40% of samples
# misclassified as Class 2 or Class 4" (proposed model, test split).
KL3_OFF = 0.40

# §2.4: the gate leans on the raw stream for bone structure (KL3-4) more than for the
# subtle boundaries of KL0-2: a sign, not a printed figure; the claim is that
# w_raw(KL3-4) - w_raw(KL0-2) is above this.
GATE_LEAN = 0.0

# the direction of a claim: the paper's figure is a floor, a ceiling, or a value
AT_LEAST, AT_MOST, ABOUT = "at least", "at most", "about"


@dataclass(frozen=True)
class Printed:
    """One printed figure: its value (percent where the paper prints percent), the test
    knees behind it (0: not measured on knees) and where it is printed."""

    value: float
    support: int
    source: str


def _per_grade(table: dict, key: str, source: str) -> dict[str, Printed]:
    out = {}
    for g, (prec, rec, f1, n) in enumerate(table["per_class"]):
        predicted = max(1, round(rec * n / prec))  # the knees called KL g: precision's support
        out |= {f"{key}/recall/KL{g}": Printed(rec, n, source),
                f"{key}/precision/KL{g}": Printed(prec, predicted, source),
                f"{key}/f1/KL{g}": Printed(f1, n, source)}
    for avg in ("macro", "weighted"):
        for i, fig in enumerate(("precision", "recall", "f1")):
            out[f"{key}/{avg}_{fig}"] = Printed(table[avg][i], TEST_KNEES, source)
    out[f"{key}/accuracy"] = Printed(100 * table["accuracy"][0], TEST_KNEES, source)
    return out


def _figures() -> dict[str, Printed]:
    out = {f"table1/{split}/{KL[g]}": Printed(n, 0, "Table 1")
           for split, counts in TABLE1.items() for g, n in enumerate(counts)}
    out |= {f"fig1/count/{KL[g]}": Printed(n, 0, "Fig. 1") for g, n in enumerate(FIG1_COUNTS)}
    out |= {f"data/proportion/{KL[g]}": Printed(p, 0, "§2.1") for g, p in enumerate(PROPORTIONS)}
    for name, values in (("alpha", ALPHA), ("count", TABLE2_COUNTS),
                         ("share_pct", TABLE2_SHARES_PCT)):
        out |= {f"table2/{name}/{KL[g]}": Printed(v, 0, "Table 2") for g, v in enumerate(values)}
    out |= _per_grade(TABLE3, "table3", "Table 3") | _per_grade(TABLE4, "table4", "Table 4")
    out |= {f"table5/accuracy/{c}": Printed(a, TEST_KNEES, "Table 5") for c, a in TABLE5.items()}
    out |= {f"steps/accuracy/{a}-{b}": Printed(d, TEST_KNEES, "§3.2" if b != "raw" or
                                               a != "proposed" else "abstract")
            for a, b, d, _ in STEPS}
    out |= {f"table7/accuracy/{m}": Printed(a, 0, "Table 7") for m, a, _ in TABLE7}
    out |= {f"table7/f1/{m}": Printed(f, 0, "Table 7") for m, _, f in TABLE7}
    n3 = TABLE4["per_class"][3][3]
    out["text/kl3_off/proposed"] = Printed(KL3_OFF, n3, "§3.1b")
    out["text/gate_lean/proposed"] = Printed(GATE_LEAN, 0, "§2.4")
    return out


FIGURES: dict[str, Printed] = _figures()


def printed(key: str) -> Printed:
    """The printed figure under ``key`` (:data:`FIGURES`)."""
    return FIGURES[key]


@dataclass(frozen=True)
class PaperClaim:
    """One claim of the paper that a record can test: a ``metric`` (a confusion-matrix
    figure name, e.g. ``accuracy``, ``recall`` with ``grade``) of configuration
    ``configs[0]`` (minus ``configs[1]`` for a difference), the paper's figure under
    ``key``, and the direction the paper claims. ``kind``: value, difference or
    threshold."""

    key: str
    kind: str
    metric: str
    configs: tuple[str, ...]
    direction: str
    text: str
    section: str
    grade: int | None = None

    @property
    def paper(self) -> Printed:
        return printed(self.key)

    @property
    def scale(self) -> float:
        """100 where the paper prints percent (accuracies and their differences)."""
        return 100.0 if self.metric == "accuracy" else 1.0

    @property
    def figure(self) -> str:
        """The confusion-matrix figure's name (``recall:4`` for a grade's)."""
        return self.metric if self.grade is None else f"{self.metric}:{self.grade}"


_NAMES = {"proposed": "the proposed model", "raw": "the raw-only baseline",
          "clahe": "CLAHE-only", "dual-noattn": "dual stream, no attention"}


def _direction(table: str, metric: str, grade: int | None) -> str:
    """What the paper claims of a figure: its headline figures (abstract, Table 4's
    accuracy and F1, the "high sensitivity" of KL4 recall) as floors, KL3's recall as a
    ceiling ("Class 3 remained difficult to identify", §3.1b), every other figure as a
    value."""
    if table == "table4" and (metric in ("accuracy", "macro_f1", "weighted_f1")
                              or (metric, grade) == ("recall", 4)):
        return AT_LEAST
    if table == "table4" and (metric, grade) == ("recall", 3):
        return AT_MOST
    return ABOUT


def _claims() -> tuple[PaperClaim, ...]:
    out = []
    for table, config, source in (("table4", "proposed", "Table 4"), ("table3", "raw", "Table 3")):
        for metric, label in (("accuracy", "accuracy (%)"), ("macro_f1", "macro F1"),
                              ("weighted_f1", "weighted F1")):
            out.append(PaperClaim(f"{table}/{metric}", "value", metric, (config,),
                                  _direction(table, metric, None),
                                  f"{label.split(' (')[0]} of {_NAMES[config]}"
                                  + (" (%)" if metric == "accuracy" else ""), "headline"))
        for g in range(5):
            for metric in ("recall", "precision", "f1"):
                headline = table == "table4" and g == 4 and metric != "f1"
                out.append(PaperClaim(f"{table}/{metric}/KL{g}", "value", metric, (config,),
                                      _direction(table, metric, g),
                                      f"KL{g} {'F1' if metric == 'f1' else metric} of "
                                      f"{_NAMES[config]}",
                                      "headline" if headline else "per grade", g))
    out += [PaperClaim(f"table5/accuracy/{c}", "value", "accuracy", (c,), ABOUT,
                       f"Table 5: {_NAMES[c]} accuracy (%)", "headline")
            for c in ("clahe", "dual-noattn")]
    out += [PaperClaim(f"steps/accuracy/{a}-{b}", "difference", "accuracy", (a, b), AT_LEAST,
                       f"{what} ({a} - {b}, accuracy points)", "table 5")
            for a, b, _, what in STEPS]
    out.append(PaperClaim("text/kl3_off/proposed", "threshold", "kl3_off", ("proposed",),
                          AT_LEAST, "over 40 % of KL3 knees are called KL2 or KL4 (share)",
                          "text"))
    out.append(PaperClaim("text/gate_lean/proposed", "threshold", "gate_lean", ("proposed",),
                          AT_LEAST, "the gate leans on the raw stream for KL3-4 (bone "
                          "structure) more than for KL0-2 (subtle boundaries): "
                          "w_raw(KL3-4) - w_raw(KL0-2)", "text"))
    return tuple(out)


CLAIMS: tuple[PaperClaim, ...] = _claims()
