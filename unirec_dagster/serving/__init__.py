"""Blocked top-K and the serving tables."""
