"""Comity crypto package."""
