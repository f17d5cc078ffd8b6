"""The confirm stage: real jit/grad/jvp/hessian runs, NaN origin, retrace counting, the AD matrix."""
