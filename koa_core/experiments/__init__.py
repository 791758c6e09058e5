"""Experiments: campaigns of runs, their records and what is concluded from them (§3).

:mod:`.campaign` (plans of runs), :mod:`.records` (one committed record per run),
:mod:`.datacopy` (which copy of the images a record saw), :mod:`.groups` (records as
configurations × seeds, and how each run was trained), :mod:`.intervals` (seed-aware
intervals), :mod:`.verdicts` (the one rule table), :mod:`.scorecard` (the claims, typed and
judged), :mod:`.ablation` (Table 5) and :mod:`.recipe` (the levers beyond the paper).

A campaign trains runs (``train``) on cached views (``data``) and predicts with
``infer``'s forward pass (:func:`koa_core.infer.backends.predict_views`); records read
``train``'s run folders and hash ``model``'s checkpoints; the rest is arithmetic on
``metrics``.

Rule (tests/test_layout.py):
Imports: the ground floor, data, model, metrics, train, infer.
Never imports: report, book, cli, bench.
"""
