"""Book: the build tool and the published book's own pages (``koa book``).

:mod:`.build` (jupytext -> papermill -> ``jupyter-book build``: profiles and parameters,
the input stamps that let a rebuild skip unchanged chapters), and the pages written at
every build rather than by a chapter: :mod:`.landing` (the answer first and the
scorecard), :mod:`.model_card` (the shipped checkpoint's model card) and :mod:`.grader`
(the files behind the in-browser "Grade your own knee" page). The chapters' own tables
and figures are :mod:`koa_core.report`'s.

Only the CLI imports this room.

Rule (tests/test_layout.py):
Imports: the ground floor, data, model, metrics, train, infer, experiments, report.
Never imports: cli, bench.
"""
