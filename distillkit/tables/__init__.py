"""Results -> tables: specs (``experiments/tables``), aggregation (Markdown, LaTeX), plots, reproduction."""

from distillkit.tables.aggregate import (
    Cell,
    TableResult,
    aggregate_table,
    compare_rows,
    paired_bootstrap,
    to_latex,
    to_markdown,
    write_table,
)
from distillkit.tables.spec import RunPlan, TableSpec, load_spec, load_specs, plan_runs

__all__ = [
    "Cell",
    "RunPlan",
    "TableResult",
    "TableSpec",
    "aggregate_table",
    "compare_rows",
    "load_spec",
    "load_specs",
    "paired_bootstrap",
    "plan_runs",
    "to_latex",
    "to_markdown",
    "write_table",
]
