"""Reports: paper-style tables and figures from the results store, as Markdown, LaTeX and PDF,
and a self-contained HTML leaderboard site."""

FORMATS = ("md", "pdf", "tex", "html")   # every format `robeval.report.build` writes, by name
DEFAULT_FORMATS = ("md", "pdf", "tex")   # what a report writes unless formats are named
