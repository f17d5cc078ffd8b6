"""4xx: AD hazards."""
