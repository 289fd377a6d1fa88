"""Reporting: the comparison table of a config set's runs."""

from emotion_core.report.table import comparison_table, to_markdown, write_comparison

__all__ = ["comparison_table", "to_markdown", "write_comparison"]
