"""Reporting: Markdown tables and every figure (matplotlib's object API only)."""
