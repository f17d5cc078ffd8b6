from __future__ import annotations

from stabcheck.rule import Rule


class ImplicitPromotion(Rule):
    """## What it does
    Reports (traced stage) every place where an operand is widened implicitly because it is
    mixed with an operand of a wider type: bfloat16/float16 data promoted to float32, or integer
    data turned into float, without an explicit cast. One finding per source line, with the
    dtypes as evidence. float32 to float64 is reported as `float64-leak` (STB301), and a bool
    mask multiplied with data of its own dtype is not a promotion; nor is an integer divided
    with `/` (true division gives a float in Python and NumPy too: `step / warmup`).

    ## Why is this bad?
    The operation runs in the wider type: a bf16 model silently computes in float32 (half the
    throughput, double the memory) and its outputs no longer have the dtype the caller expects,
    which changes carries and train states and triggers retraces.

    ## Example
    ```python
    def layer(w_bf16, x_f32):
        return w_bf16 @ x_f32          # w is promoted to float32
    ```

    ## Use instead
    Cast explicitly to the dtype you mean:
    ```python
    def layer(w_bf16, x_f32):
        return w_bf16 @ x_f32.astype(w_bf16.dtype)
    ```
    """

    code = "STB303"
    name = "implicit-promotion"
    severity = "warning"
    stages = ("traced", "confirmed", "runtime")
