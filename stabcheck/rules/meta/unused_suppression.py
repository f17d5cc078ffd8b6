from __future__ import annotations

from stabcheck.rule import Rule


class UnusedSuppression(Rule):
    """## What it does
    Reports a `# noqa: STBnnn` or `# stabcheck: ignore[slug]` comment that suppresses nothing:
    no finding of that rule is on its line, or the rule does not exist.

    ## Why is this bad?
    Stale suppressions hide future regressions on that line and mislead readers into thinking
    a hazard is there. Blanket `# noqa` and other tools' codes are left alone.

    ## Example
    ```python
    @jax.jit
    def f(x):
        return x + 1  # noqa: STB101
    ```

    ## Use instead
    Remove the comment:
    ```python
    @jax.jit
    def f(x):
        return x + 1
    ```
    """

    code = "STB900"
    name = "unused-suppression"
    severity = "warning"
    stages = ("static", "traced", "confirmed")
    INVALID = ("import jax\n\n@jax.jit\ndef f(x):\n    return x + 1  # noqa: STB101  # expect: STB900\n",)
    VALID = (
        "import jax\n\n@jax.jit\ndef f(x):\n    if x > 0:  # noqa: STB101\n        return x\n    return -x\n",
        "import os  # noqa: F401\n",
    )
