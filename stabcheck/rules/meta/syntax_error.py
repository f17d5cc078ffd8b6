from __future__ import annotations

from stabcheck.rule import Rule


class SyntaxErrorRule(Rule):
    """## What it does
    Reports a file that cannot be read as Python: a syntax error, bytes that are not valid
    UTF-8 (or the declared encoding), NUL bytes, or an unreadable file. A file that is valid
    Python for a newer interpreter than the one running stabcheck (`type X = ...`, `def f[T]`
    on Python 3.11) is no finding: the run names it in one note, unchecked.

    ## Why is this bad?
    No other rule can check a file that does not parse, so its hazards stay hidden. The other
    files are still checked.

    ## Example
    ```python
    def loss(params, x)
        return jnp.sum(x)
    ```

    ## Use instead
    Fix the syntax error so the file parses:
    ```python
    def loss(params, x):
        return jnp.sum(x)
    ```
    """

    code = "STB901"
    name = "syntax-error"
    INVALID = ("def loss(params, x)  # expect: STB901\n    return x\n",)
    VALID = ("def loss(params, x):\n    return x\n",)
