"""The static stage: `ast` + `tokenize` only. Never imports JAX, libcst or the user's code."""
