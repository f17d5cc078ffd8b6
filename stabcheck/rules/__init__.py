"""The rule catalogue: one rule per file, named by its slug, grouped by hazard family."""
