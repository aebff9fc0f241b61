"""Samples, transforms, datasets and collation."""
