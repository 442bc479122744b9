"""Run reports for continual pre-training: forgetting/adaptation tables and plots.

`cptkit.report.tables` holds pure functions over a run's ``summary.json``;
`cptkit.report.render` turns a run directory into ``report.md`` plus PNG plots.
Nothing here imports matplotlib until a report is actually rendered.
"""

from cptkit.report.tables import adaptation_rows, forgetting_rows, markdown_table

__all__ = ["adaptation_rows", "forgetting_rows", "markdown_table", "write_report"]


def write_report(run_dir, title=None):
    """Render ``report.md`` and plots for ``run_dir``; see `cptkit.report.render.write_report`."""
    # Imported lazily so that `import cptkit.report` stays cheap and matplotlib-free.
    from cptkit.report.render import write_report as _write_report

    return _write_report(run_dir, title=title)
