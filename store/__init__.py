"""Comity store package."""
