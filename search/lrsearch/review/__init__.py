"""Reviewing results: best and trials, the report and its plots, the dashboard and its notes, progress lines."""
