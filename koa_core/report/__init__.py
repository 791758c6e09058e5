"""Report: tables, figures and run helpers for the book's chapters (the notebooks stay thin).

Every chapter of the book shows the paper's own numbers next to ours. The paper's figures
are images we do not have, so its numbers come from its tables (Tables 1-5 and 7, the
class totals printed in Fig. 1), copied as printed, slips included, in
:mod:`koa_core.paper`; :func:`.data.paper_count_slips` lists the slips. Figures are made
with pyplot, so a notebook shows each one once, when the cell ends; tables are pandas
DataFrames.

One module per chapter, each imported by its notebook by name (``from koa_core.report
import data``); this package re-exports nothing: :mod:`.data` (§2.1, chapter 1),
:mod:`.clahe` (§2.2, Figs. 2-3, chapter 2), :mod:`.loss` (§2.3b, Table 2, chapter 3),
:mod:`.training` (§2.4: run reuse, learning curves, the ablation's runs; chapter 4),
:mod:`.ablation` (§3.2, Table 5: records or runs made here, decided once; chapter 5),
:mod:`.evaluation` (§3: per-image predictions, fusion gates, Tables 3-4 and 7, Figs. 5-6;
chapter 6), :mod:`.conformal` (sets of grades, chapter 6), :mod:`.cams` (Fig. 7, chapter
7) and :mod:`.beyond` (the levers beyond the paper, chapter 8); shared by the chapters:
:mod:`.common` (page set-up), :mod:`.paper` (Table 5's row names, others' published
results) and :mod:`.published` (chapters that read committed result records, Table 5).
The book's build and its own pages (landing page, model card, grader) are
:mod:`koa_core.book`.

Rule (tests/test_layout.py):
Imports: the ground floor, data, model, metrics, train, infer, experiments.
Never imports: book, cli, bench.
"""
