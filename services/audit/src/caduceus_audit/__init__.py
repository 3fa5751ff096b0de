"""Audit: every bus event stored in SQL."""
