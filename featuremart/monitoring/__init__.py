"""Monitoring: feature statistics and drift (stats.py, drift.py)."""
