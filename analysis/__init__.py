"""Analysis of study results: loading, encoding, factor importance, findings checks, reports."""
