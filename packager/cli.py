"""The `packager` command: a click group whose commands live in packager/commands/, one module each.

Heavy libraries (torch, diffusers, boto3, docker) are imported inside the commands that use them, so
`packager --help` and no-op re-runs stay fast.
"""

from __future__ import annotations

import sys

import click

from packager import __version__
from packager.commands.build import build_command
from packager.commands.convert import convert
from packager.commands.deploy import deploy
from packager.commands.fetch import fetch
from packager.commands.gc import gc
from packager.commands.invoke import invoke
from packager.commands.lock import lock
from packager.commands.package import package
from packager.commands.package_all import package_all
from packager.commands.plan import plan
from packager.commands.publish import publish
from packager.commands.pull import pull
from packager.commands.render import render_command
from packager.commands.seed import seed
from packager.commands.serve import serve
from packager.commands.smoke import smoke
from packager.commands.upload import upload
from packager.commands.validate import validate
from packager.commands.verify import verify
from packager.errors import PackagerError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="packager")
def cli() -> None:
    """Package a Hugging Face diffusion model for fast RunPod cold starts.

    The stages run in order (recipe → lock → fetch → convert → upload → image or volume → deploy);
    `packager package RECIPE` runs them all and skips what is already done.
    """


# Each command lives in the module named after it; click lists them alphabetically.
for _command in (
    validate,
    lock,
    fetch,
    convert,
    verify,
    upload,
    pull,
    seed,
    publish,
    render_command,
    build_command,
    serve,
    smoke,
    package,
    package_all,
    gc,
    deploy,
    invoke,
    plan,
):
    cli.add_command(_command)


def main() -> None:
    """Entry point: user-fixable errors become one line on stderr and a non-zero exit."""
    try:
        cli.main(standalone_mode=False)
    except PackagerError as exc:
        click.echo(f"packager: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("packager: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except BrokenPipeError:
        sys.exit(1)
