"""Shared test fixtures, one plugin module per area under tests/rig/."""

import os

pytest_plugins = [
    "tests.rig.fixtures_hub",
    "tests.rig.fixtures_s3",
    "tests.rig.fixtures_runpod",
    "tests.rig.fixtures_docker",
    "tests.rig.fixtures_net",
]

# The worker's import trimming (worker_runtime/trim.py) hides peft and torch.distributed from
# diffusers and transformers for the rest of the process. Tests that call the worker's loaders in
# the pytest process share it with tests that need both (the LoRA oracle uses peft), so trimming is
# off here; worker processes the tests start get the worker's default (tests/rig/worker.py drops
# WORKER_* variables from their environment).
os.environ["WORKER_TRIM_IMPORTS"] = "0"
