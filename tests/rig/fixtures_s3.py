"""pytest fixtures: s3 (see tests/conftest.py)."""
