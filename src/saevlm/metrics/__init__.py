"""Metrics on stored activations and codes: pure functions on arrays, and their commands."""
