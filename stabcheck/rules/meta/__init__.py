"""9xx: meta findings about the analysis itself."""
