"""3xx: dtype instability."""
