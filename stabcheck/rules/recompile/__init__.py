"""5xx: recompilation."""
