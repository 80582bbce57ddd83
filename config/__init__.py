"""Comity config package."""
