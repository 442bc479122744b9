"""Run reports for continual pre-training: forgetting/adaptation tables and plots.

`cpt.report.tables` holds pure functions over a run's ``summary.json``;
`cpt.report.render` turns a run directory into ``report.md`` plus PNG plots.
Nothing here imports matplotlib until a report is actually rendered.
"""

from cpt.report.tables import adaptation_rows, forgetting_rows, markdown_table

__all__ = ["adaptation_rows", "forgetting_rows", "markdown_table", "write_report"]


def write_report(run_dir, title=None):
    """Render ``report.md`` and plots for ``run_dir``; see `cpt.report.render.write_report`."""
    # Imported lazily so that `import cpt.report` stays cheap and matplotlib-free.
    from cpt.report.render import write_report as _write_report

    return _write_report(run_dir, title=title)
