"""pytest fixtures: hub (see tests/conftest.py)."""
