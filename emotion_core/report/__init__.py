"""Reporting: the comparison table of a config set's runs, and the full report of its model entries."""

from emotion_core.report.config_table import comparison_table, to_markdown, write_comparison
from emotion_core.report.html import write_report
from emotion_core.report.plots import (
    plot_f1_vs_params,
    plot_full_vs_peft_pr_auc,
    plot_per_label_f1,
    plot_reliability,
    write_plots,
)
from emotion_core.report.summary import format_ci, ranked_entries, summary_table
from emotion_core.report.summary import to_markdown as summary_markdown

__all__ = [
    "comparison_table",
    "format_ci",
    "plot_f1_vs_params",
    "plot_full_vs_peft_pr_auc",
    "plot_per_label_f1",
    "plot_reliability",
    "ranked_entries",
    "summary_markdown",
    "summary_table",
    "to_markdown",
    "write_comparison",
    "write_plots",
    "write_report",
]
