"""pytest fixtures: runpod (see tests/conftest.py)."""
