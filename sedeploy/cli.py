"""The ``sedeploy`` command line: it parses arguments and calls the library, nothing more.

Errors raised by the library become one line on stderr and an exit code (2 for
usage, 1 for failure); ``-v`` shows the traceback instead.
"""

from __future__ import annotations

import ast
import json
import logging
from typing import Any

import click

from sedeploy import __version__
from sedeploy.errors import SedeployError
from sedeploy.info import model_info


class _Group(click.Group):
    """A click group that turns sedeploy's errors into one line and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except SedeployError as error:
            if ctx.meta.get("sedeploy.verbose"):
                raise
            click.echo(f"error: {error}", err=True)
            ctx.exit(error.exit_code)
        except Exception as error:
            if ctx.meta.get("sedeploy.verbose"):
                raise
            click.echo(
                f"error: unexpected {type(error).__name__}: {error} (run with -v for the traceback)", err=True
            )
            ctx.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="sedeploy")
@click.option("-v", "--verbose", is_flag=True, help="Log details and show tracebacks on errors.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """Take an SE-ResNet from checkpoint to fast, verified inference."""
    ctx.meta["sedeploy.verbose"] = verbose
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


def _parse_img_size(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        parts = [int(part) for part in value.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 1:
        raise click.BadParameter(f"{value!r} is not a size; use N or HxW, e.g. 224 or 473x473")
    return (parts[0], parts[1])


def _parse_options(pairs: tuple[str, ...]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE, e.g. reduction=8", param_hint="--option")
        try:
            options[key.replace("-", "_")] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            options[key.replace("-", "_")] = raw
    return options


@cli.command()
@click.argument("arch")
@click.option("--img-size", help="Input size, N or HxW (default: the model's, 224).")
@click.option("--in-chans", type=click.IntRange(min=1), help="Input channels (1 for grayscale).")
@click.option("--num-classes", type=click.IntRange(min=1), help="Number of output classes.")
@click.option(
    "-O",
    "--option",
    "options",
    multiple=True,
    metavar="KEY=VALUE",
    help="Any other model option, e.g. -O reduction=8 -O se_variant=pre (repeatable).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def info(
    arch: str,
    img_size: str | None,
    in_chans: int | None,
    num_classes: int | None,
    options: tuple[str, ...],
    as_json: bool,
) -> None:
    """Parameters, GMACs/GFLOPs, per-stage breakdown and SE overhead of ARCH."""
    model_options = _parse_options(options)
    if in_chans is not None:
        model_options["in_chans"] = in_chans
    if num_classes is not None:
        model_options["num_classes"] = num_classes
    report = model_info(arch, img_size=_parse_img_size(img_size), **model_options)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(report.to_text())


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="sedeploy")
