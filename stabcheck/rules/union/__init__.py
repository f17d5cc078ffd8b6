"""2xx: unstable return structure (the "Union")."""
