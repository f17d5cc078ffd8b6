"""1xx: tracer leaks into Python."""
