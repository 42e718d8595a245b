"""Reports: paper-style tables and figures from the results store, as Markdown, LaTeX and PDF."""

FORMATS = ("md", "pdf", "tex")   # the writers of `robeval.report.render`, by file extension
