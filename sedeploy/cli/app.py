"""The ``sedeploy`` group: global options, the commands, and how a failure becomes one line and an exit code.

Errors raised by the library become ``error: <one line>`` on stderr with the error's exit code (2 for usage,
1 for failure), its parameter names replaced by the command's flags (:func:`in_cli_words`); ``-v`` shows the
traceback instead. Ctrl-C and SIGTERM end a command with one line and 130 / 143.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import click

from sedeploy._version import __version__
from sedeploy.cli.build import build_engine_command, optimize_command
from sedeploy.cli.check import (
    bench_command,
    cache_command,
    demo_command,
    inspect_command,
    predict_command,
    verify_command,
)
from sedeploy.cli.interrupts import interruption
from sedeploy.cli.model import export, info, train_command
from sedeploy.cli.serving import loadtest_command, serve_command, triton_command
from sedeploy.errors import SedeployError

LIBRARY_NAMES: dict[str, str] = {
    "profile": "batch_profile",
    "min_cosine": "min_cos",
    "channels": "in_chans",
    "model": "model_target",
    "duration_s": "duration",
    "version": "first_version",
}
"""Library parameter names whose CLI option is named otherwise (library name -> click parameter name)."""


def in_cli_words(error: SedeployError, command: click.Command | None) -> str:
    """The error's message with the library's parameter names replaced by ``command``'s flags.

    ``name=True`` becomes the flag, ``name=False`` its ``--no-`` form; a bare name is replaced when it is
    an identifier with an underscore (``calib_size``) or one the error lists in ``params`` (``labels``).
    """
    message = str(error)
    if command is None:
        return message
    flags: dict[str, click.Option] = {}
    for param in command.params:
        if isinstance(param, click.Option) and param.name:
            flags[param.name] = param
    for library, cli_name in LIBRARY_NAMES.items():
        if cli_name in flags and library not in flags:
            flags[library] = flags[cli_name]
    for name, option in sorted(flags.items(), key=lambda item: -len(item[0])):
        flag = max(option.opts, key=len)
        negative = max(option.secondary_opts, key=len) if option.secondary_opts else flag
        message = re.sub(rf"(?<![\w-]){name}=True\b", flag, message)
        message = re.sub(rf"(?<![\w-]){name}=False\b", negative, message)
        if "_" in name or name in error.params:
            message = re.sub(rf"(?<![\w./-]){name}\b(?![=/]|\.\w)", flag, message)  # not inside a path
    return message


class _Group(click.Group):
    """A click group that turns sedeploy's errors into one line and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort):
            raise
        except click.exceptions.ClickException as error:
            command = error.ctx.command_path if isinstance(error, click.UsageError) and error.ctx else None
            hint = f" (see '{command} --help')" if command else ""
            message = " ".join(error.format_message().split())
            click.echo(f"error: {message}{hint}", err=True)
            ctx.exit(error.exit_code)
        except SedeployError as error:
            if ctx.meta.get("sedeploy.verbose"):
                raise
            subcommand = self.get_command(ctx, ctx.invoked_subcommand) if ctx.invoked_subcommand else None
            click.echo(f"error: {in_cli_words(error, subcommand)}", err=True)
            ctx.exit(error.exit_code)
        except KeyboardInterrupt as interrupt:  # also while a command imports its library (its first seconds)
            if ctx.meta.get("sedeploy.verbose"):
                raise
            line, code = interruption(interrupt)
            click.echo(line, err=True)
            ctx.exit(code)
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
@click.option(
    "-q", "--quiet", is_flag=True, help="No progress: neither bars nor, without a terminal, progress lines."
)
@click.pass_context
def cli(ctx: click.Context, verbose: bool, quiet: bool) -> None:
    """Take an SE-ResNet from checkpoint to fast, verified inference."""
    ctx.meta["sedeploy.verbose"] = verbose
    ctx.meta["sedeploy.quiet"] = quiet
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    # Without a terminal, long steps report as INFO lines of this logger (sedeploy.progress).
    logging.getLogger("sedeploy.progress").setLevel(logging.WARNING if quiet else logging.INFO)


for _command in (
    info,
    export,
    build_engine_command,
    train_command,
    triton_command,
    bench_command,
    verify_command,
    optimize_command,
    inspect_command,
    predict_command,
    cache_command,
    demo_command,
    serve_command,
    loadtest_command,
):
    cli.add_command(_command)
