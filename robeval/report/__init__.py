"""Reports: paper-style tables and figures from the results store, as Markdown, LaTeX and PDF."""
