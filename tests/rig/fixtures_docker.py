"""pytest fixtures: docker (see tests/conftest.py)."""
