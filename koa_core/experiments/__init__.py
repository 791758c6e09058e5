"""Experiments: campaigns of runs, their records and what is concluded from them (§3).

:mod:`.campaign` (plans of runs), :mod:`.records` (one committed record per run),
:mod:`.datacopy` (which copy of the images a record saw), :mod:`.ablation` (Table 5),
:mod:`.recipe` (the levers beyond the paper) and :mod:`.scorecard` (the claims).

Rule (tests/test_layout.py): builds on ``train``; never imports ``report`` or the CLI.
"""
