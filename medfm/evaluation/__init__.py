"""Metrics, evaluation plans and report rendering."""
