"""Merge operators; importing this package registers them all."""
