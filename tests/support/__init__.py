"""Harnesses shared by the test levels (processes, waiting)."""
