"""Tables, figures and run helpers for the book's chapters (the notebooks stay thin).

Every chapter of the book shows the paper's own numbers next to ours. The paper's figures
are images we do not have, so its numbers come from its tables (Tables 1-5 and 7, the
class totals printed in Fig. 1), copied as printed, slips included, in
:mod:`koa_core.paper`; :func:`paper_count_slips` lists the slips. The rest are small
helpers: dataset tables (§2.1), CLAHE measures (§2.2, Figs. 2-3), the loss-weighting table
(§2.3b, Table 2), run reuse and learning curves (§2.4), per-image predictions and fusion
gates, the ablation (Table 5), classification reports and confusion matrices (Tables
3-4, Figs. 5-6), the comparison with published work (Table 7) and Grad-CAM panels
(Fig. 7). Figures are made with pyplot, so a notebook shows each one once, when the
cell ends; tables are pandas DataFrames.

One module per part of the paper: :mod:`.paper` (Table 5's row names, others' published
results), :mod:`.common` (page set-up), :mod:`.data` (§2.1), :mod:`.clahe` (§2.2),
:mod:`.loss` (§2.3b), :mod:`.training` (§2.4, Table 5), :mod:`.evaluation` (§3) and
:mod:`.cams` (Fig. 7).
Notebooks use them through this package: ``from koa_core import report``.
"""

from koa_core.report.paper import ABLATIONS, KL, PUBLISHED
from koa_core.report.common import ensure_phantom, parameter_table, resolve_root, setup
from koa_core.report.data import (
    counts_match_text, counts_table, crop_example, crop_text, first_split,
    imbalance_text, leakage_table, leakage_verdict, load_stats, majority_table,
    paper_count_slips, paper_counts_table, sample_grid, sample_images, sample_note,
    sample_table, share_figure, source_name, split_counts, stats_provenance,
)
from koa_core.report.clahe import clahe_figure, clahe_measures, clahe_table, clahe_verdict
from koa_core.report.conformal import conformal_figure, half_split_table
from koa_core.report.loss import (
    conjecture_text, focal_figure, influence_table, influence_text, table2_reasons,
    table2_verdict,
)
from koa_core.report.training import (
    ablation_figure, config_table, learning_curves, proposed_checkpoint, proposed_run,
    read_history, run_ablation, run_status, run_summary, train_or_reuse,
)
from koa_core.report.evaluation import (
    ci_table, comparison_table, confusion_figure, gate_figure, gate_table, kl4_table,
    paper_correct_counts, paper_report_table, predict_split, report_table,
)
from koa_core.report.cams import (
    cam_cases, cam_conflict_text, cam_figure, cam_share_table, cases_text, checkpoint_note,
    pick_cases, stream_cams,
)
from koa_core.report.beyond import (
    calibration_table, goals_table, levers_figure, levers_frame, levers_summary,
    post_hoc_frame, reliability_figure, train_recipe,
)
from koa_core.report.published import (
    data_caveats, load_records, provenance_table, record_frame, record_history, record_metrics,
    record_summary, records_note, selected_record_name, shared_provenance, table5_claims,
    table5_figure, table5_table,
)
from koa_core.report.landing import scorecard_markdown, scorecard_table, selection_frame

__all__ = [
    "calibration_table",
    "goals_table",
    "levers_figure",
    "levers_frame",
    "levers_summary",
    "post_hoc_frame",
    "reliability_figure",
    "train_recipe",
    "ABLATIONS",
    "KL",
    "PUBLISHED",
    "ablation_figure",
    "cam_cases",
    "cam_conflict_text",
    "cam_figure",
    "cam_share_table",
    "cases_text",
    "checkpoint_note",
    "ci_table",
    "clahe_figure",
    "clahe_measures",
    "clahe_table",
    "clahe_verdict",
    "conformal_figure",
    "comparison_table",
    "config_table",
    "conjecture_text",
    "confusion_figure",
    "counts_match_text",
    "counts_table",
    "crop_example",
    "crop_text",
    "data_caveats",
    "ensure_phantom",
    "first_split",
    "focal_figure",
    "gate_figure",
    "gate_table",
    "half_split_table",
    "imbalance_text",
    "influence_table",
    "influence_text",
    "kl4_table",
    "leakage_table",
    "leakage_verdict",
    "learning_curves",
    "load_records",
    "load_stats",
    "majority_table",
    "paper_correct_counts",
    "paper_count_slips",
    "paper_counts_table",
    "paper_report_table",
    "parameter_table",
    "pick_cases",
    "predict_split",
    "proposed_checkpoint",
    "proposed_run",
    "provenance_table",
    "shared_provenance",
    "read_history",
    "record_frame",
    "record_history",
    "record_metrics",
    "record_summary",
    "records_note",
    "report_table",
    "resolve_root",
    "run_ablation",
    "run_status",
    "run_summary",
    "sample_grid",
    "sample_images",
    "sample_note",
    "sample_table",
    "scorecard_markdown",
    "scorecard_table",
    "selection_frame",
    "selected_record_name",
    "setup",
    "share_figure",
    "source_name",
    "split_counts",
    "stats_provenance",
    "stream_cams",
    "table2_reasons",
    "table2_verdict",
    "table5_claims",
    "table5_figure",
    "table5_table",
    "train_or_reuse",
]
