"""`python -m worker_runtime [runpod flags]`: load the artifact, then serve jobs.

The runpod SDK reads its own flags from sys.argv when the handler starts (`--test_input JSON`,
`--rp_serve_api`, `--rp_api_host`, `--rp_api_port`, `--rp_log_level`, ...). A `--test_input` that
is not JSON is refused here, before seconds of loading are spent on it. With `--test_input` the
process answers that one job and exits 1 when the answer is an error (the SDK's rule), else 0.
"""

from __future__ import annotations

import json
import sys


def _check_test_input(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        value = None
        if arg == "--test_input" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--test_input="):
            value = arg.split("=", 1)[1]
        if value is None:
            continue
        try:
            job = json.loads(value)
        except json.JSONDecodeError as exc:
            return f"--test_input: not valid JSON ({exc.msg} at char {exc.pos})"
        if not isinstance(job, dict) or "input" not in job:
            return '--test_input: expected a job object like {"input": {"prompt": "..."}}'
    return None


def main() -> None:
    problem = _check_test_input(sys.argv[1:])
    if problem:
        print(f"worker: error: {problem}", file=sys.stderr)
        sys.exit(2)
    from worker_runtime import handler

    handler.main()


if __name__ == "__main__":
    main()
