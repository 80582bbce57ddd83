"""Comity gateway package."""
