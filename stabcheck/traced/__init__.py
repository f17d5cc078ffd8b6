"""The traced stage: entries, abstract inputs, make_jaxpr walkers. Imports JAX lazily, in a worker."""
