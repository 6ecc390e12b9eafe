"""`python -m volume_sync pull|verify|prune`: exit 0 when all is well, 1 when a check fails, 2 for
usage and every other error, each reported as one line on stderr."""

from __future__ import annotations

import argparse
import sys

from volume_sync.pull import DEFAULT_LOCK_STALE_S, DEFAULT_MOUNT, PullError, pull

EXIT_OK, EXIT_VERIFY, EXIT_ERROR = 0, 1, 2


def _positive(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be positive (got {value})")
    return number


def _count(value: str) -> int:
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"not a whole number >= 0: {value!r}")
    return int(value)


def _id_prefix(value: str) -> str:
    if len(value) < 12 or any(c not in "0123456789abcdef" for c in value):
        raise argparse.ArgumentTypeError(f"an artifact id (at least 12 hex digits): {value!r}")
    return value


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="python -m volume_sync",
        description="Copy artifacts from the store onto a mounted network volume, verify and prune them.",
    )
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    mount_help = f"where the network volume is mounted (default: {DEFAULT_MOUNT})"

    p = sub.add_parser("pull", help="copy one artifact from the store onto the volume, once")
    p.add_argument(
        "store_uri", metavar="STORE_URI", help="s3://bucket/.../<name>/<artifact-id> or a directory"
    )
    p.add_argument("--mount", default=DEFAULT_MOUNT, help=mount_help)
    p.add_argument(
        "--timeout",
        type=_positive,
        default=None,
        metavar="S",
        help="give up waiting for another worker's pull after S seconds (default: wait)",
    )
    p.add_argument(
        "--lock-stale-s",
        type=_positive,
        default=DEFAULT_LOCK_STALE_S,
        metavar="S",
        help=f"a lock not refreshed for S seconds is stale (default: {DEFAULT_LOCK_STALE_S:g})",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines")

    v = sub.add_parser("verify", help="hash every artifact on the volume against its manifest")
    v.add_argument("--mount", default=DEFAULT_MOUNT, help=mount_help)

    r = sub.add_parser("prune", help="remove older artifact ids of a model, newest by .ready time")
    r.add_argument("--keep", type=_count, required=True, metavar="N", help="how many of each model to keep")
    r.add_argument("--name", default=None, help="only this model (default: every model)")
    r.add_argument("--mount", default=DEFAULT_MOUNT, help=mount_help)
    r.add_argument(
        "--protect",
        type=_id_prefix,
        action="append",
        default=[],
        metavar="ID",
        help="never remove this artifact id (repeatable; a prefix of 12+ hex digits is enough)",
    )
    r.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "pull":
            path = pull(
                args.store_uri,
                args.mount,
                timeout_s=args.timeout,
                quiet=args.quiet,
                lock_stale_s=args.lock_stale_s,
            )
            print(path)
            return EXIT_OK
        if args.command == "verify":
            return _verify(args.mount)
        return _prune(args)
    except PullError as exc:
        _error(str(exc))
        return exc.exit_code
    except OSError as exc:
        _error(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": "))
        return EXIT_ERROR
    except KeyboardInterrupt:
        _error("interrupted")
        return 130


def _verify(mount: str) -> int:
    from pathlib import Path

    from volume_sync.verify import verify_volume

    if not Path(mount).is_dir():
        _error(f"{mount}: no such directory (is the network volume mounted? see --mount)")
        return EXIT_ERROR
    findings = verify_volume(mount)
    for f in findings:
        print(f"{f.status:<10}  {f.name}/{f.artifact_id}  {f.detail}".rstrip())
    failed = [f for f in findings if f.status == "failed"]
    ok = sum(f.status == "ok" for f in findings)
    print(f"{ok} ok, {len(failed)} failed, {len(findings) - ok - len(failed)} incomplete", file=sys.stderr)
    return EXIT_VERIFY if failed else EXIT_OK


def _prune(args: argparse.Namespace) -> int:
    import shutil
    from pathlib import Path

    from volume_sync.prune import plan_prune, remove_artifact, stale_staging

    if not Path(args.mount).is_dir():
        _error(f"{args.mount}: no such directory (is the network volume mounted? see --mount)")
        return EXIT_ERROR
    removed = 0
    for d in plan_prune(args.mount, args.keep, name=args.name, protect=tuple(args.protect)):
        if d.action == "remove":
            if not args.dry_run:
                remove_artifact(args.mount, d.name, d.artifact_id)
            removed += 1
        shown = "would remove" if (d.action == "remove" and args.dry_run) else d.action
        print(f"{shown:<12}  {d.name}/{d.artifact_id}")
    for model, leftover in stale_staging(args.mount, args.name):
        if not args.dry_run:
            shutil.rmtree(leftover, ignore_errors=True)
        removed += 1
        shown = "would remove" if args.dry_run else "remove"
        print(f"{shown:<12}  {model}/{leftover.name} (left by a failed pull or prune)")
    print(f"{'would remove' if args.dry_run else 'removed'} {removed}", file=sys.stderr)
    return EXIT_OK


def _error(message: str) -> None:
    print(f"volume_sync: error: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
