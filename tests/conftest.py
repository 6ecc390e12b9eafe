"""Shared test fixtures, one plugin module per area under tests/rig/."""

pytest_plugins = [
    "tests.rig.fixtures_hub",
    "tests.rig.fixtures_s3",
    "tests.rig.fixtures_runpod",
    "tests.rig.fixtures_docker",
]
