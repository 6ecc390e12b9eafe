"""The `packager` command: a click group whose commands live in packager/commands/, one file per area.

Heavy libraries (torch, diffusers, boto3, docker) are imported inside the commands that use them, so
`packager --help` and no-op re-runs stay fast.
"""

from __future__ import annotations

import sys

import click

from packager import __version__
from packager.commands import core, deploy, image, package, plan, serve, source, store
from packager.errors import PackagerError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="packager")
def cli() -> None:
    """Package a Hugging Face diffusion model for fast RunPod cold starts.

    The stages run in order (recipe → lock → fetch → convert → upload → image or volume → deploy);
    `packager package RECIPE` runs them all and skips what is already done.
    """


for _module in (core, source, store, image, serve, package, deploy, plan):
    for _command in _module.COMMANDS:
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
