from __future__ import annotations

from stabcheck.rule import Rule


class AnalysisError(Rule):
    """## What it does
    Reports that stabcheck could not analyse something: an entry's module raised, hung, exited
    or ran out of memory on import, tracing crashed, or a file was too deeply nested.

    ## Why is this bad?
    What was not analysed may hide hazards. The message says what failed and where; every
    other file and entry is still checked.

    ## Example
    ```python
    # entries.py
    import stabcheck
    raise RuntimeError("needs a GPU")   # the module raises on import
    ```

    ## Use instead
    Make the entries' module importable without side effects, or raise `--timeout`.
    """

    code = "STB902"
    name = "analysis-error"
    stages = ("static", "traced", "confirmed", "runtime")
