"""What the commands share: options, value parsers, the --json/progress conventions, and late library values.

A default, a choice list or a help text that comes from a library module is written as :class:`Later`
(``Later("sedeploy.precision", "FLAVOURS")``): the module is imported only when a command is parsed or its
help shown, never at start-up, so ``sedeploy --help`` imports no PyTorch, ONNX or inference engine. Every
option goes through :func:`option`, which understands :class:`Later` values.
"""

from __future__ import annotations

import ast
import inspect
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import click


@dataclass(frozen=True)
class Later:
    """A library value read when it is needed: ``module.name`` (or the module itself), then ``then(value)``.

    The library stays the one home of each default and choice list; the command line only names it.
    """

    module: str
    name: str | None = None
    then: Callable[[Any], Any] | None = None

    def get(self) -> Any:
        """Import the module and return the value (passed through ``then``); a module that needs a missing
        optional package (PyTorch) is one line naming its extra."""
        from sedeploy.optional import import_optional

        value: Any = import_optional(self.module)
        if self.name is not None:
            value = getattr(value, self.name)
        return self.then(value) if self.then is not None else value


class LaterOption(click.Option):
    """A click option whose default and help may be :class:`Later` values (read when used, then kept)."""

    def __init__(
        self, param_decls: Sequence[str] | None = None, *, help: str | Later | None = None, **kwargs: Any
    ) -> None:
        self._later_help = help if isinstance(help, Later) else None
        super().__init__(param_decls, help=None if isinstance(help, Later) else help, **kwargs)

    def get_default(self, ctx: click.Context, call: bool = True) -> Any:
        if isinstance(self.default, Later):
            self.default = self.default.get()
        return super().get_default(ctx, call=call)

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        if self._later_help is not None:
            self.help = inspect.cleandoc(self._later_help.get())
            self._later_help = None
        return super().get_help_record(ctx)


class LaterChoice(click.Choice[Any]):
    """``click.Choice`` over a library's tuple of names, read when the option is parsed or its help shown."""

    def __init__(self, choices: Later, case_sensitive: bool = True) -> None:
        self._later: Later | None = choices
        self._choices: tuple[Any, ...] = ()
        self.case_sensitive = case_sensitive

    @property
    def choices(self) -> tuple[Any, ...]:
        if self._later is not None:
            self._choices = tuple(self._later.get())
            self._later = None
        return self._choices

    @choices.setter
    def choices(self, value: Iterable[Any]) -> None:
        self._choices, self._later = tuple(value), None


def option(*param_decls: str, **attrs: Any) -> Callable[[Any], Any]:
    """``click.option`` that accepts :class:`Later` defaults and help (every sedeploy option is made here)."""
    attrs.setdefault("cls", LaterOption)
    return click.option(*param_decls, **attrs)


# ---- the --json and progress conventions -------------------------------------------------------------------

JSON_OUTPUT = option(
    "--json",
    "json_out",
    metavar="[FILE]",
    is_flag=False,
    flag_value="-",
    default=None,
    type=click.Path(dir_okay=False, allow_dash=True),
    help="The report as JSON: alone, on stdout instead of the text; --json FILE writes it there as well.",
)
"""One meaning of --json in every reporting command."""


def progress_wanted(json_out: str | None = None) -> bool:
    """Whether a command shows progress: not with --quiet, nor when its JSON goes to stdout."""
    ctx = click.get_current_context()
    return not ctx.meta.get("sedeploy.quiet", False) and json_out != "-"


def check_json_out(json_out: str | None) -> None:
    """Fail before any work when --json FILE could not be written."""
    if json_out and json_out != "-":
        from sedeploy.files import check_writable

        check_writable(json_out)


def refuse_outputs_over_inputs(
    outputs: list[tuple[str, str | None]],
    artifacts: list[str],
    others: Sequence[tuple[str, str | None]] = (),
) -> None:
    """Fail before any work when a report file (``--json FILE``, ``--markdown``, ``--plot``) is one of the
    command's inputs: an artifact, its manifest, or ``others`` (a reference, a data file, an image of a data
    folder), compared as files (links and hard links count)."""
    from sedeploy.artifacts.manifest import manifest_path
    from sedeploy.files import refuse_output_over_input

    inputs: list[tuple[str, str | os.PathLike[str] | None]] = list(others)
    for artifact in artifacts:
        inputs += [("the artifact", artifact), ("the artifact's manifest", manifest_path(artifact))]
    refuse_output_over_input([(name, None if path == "-" else path) for name, path in outputs], inputs)


def write_json_file(path: str, data: Any) -> None:
    """``--json FILE``: the report written atomically."""
    from sedeploy.files import write_json_atomic

    write_json_atomic(path, data)


def emit(report: Any, json_out: str | None) -> None:
    """Print ``report`` (``to_text``), or its JSON (``to_dict``) to stdout or a file, as --json says."""
    if json_out == "-":
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    if json_out:
        write_json_file(json_out, report.to_dict())
    click.echo(report.to_text())


# ---- options several commands share -------------------------------------------------------------------------

IN_CHANS = option(
    "--in-chans",
    type=click.IntRange(min=1),
    help="Input channels (1: grayscale, 3: RGB; images come in as one of them).",
)
MAX_BATCH_SERVED = option(
    "--max-batch", type=click.IntRange(min=1), help="Largest batch (default: the artifact's max batch)."
)
INSTANCES = option(
    "--instances", type=click.IntRange(min=1), default=1, show_default=True, help="Model instances."
)
DEVICE = option(
    "--device",
    help="Where the artifact runs: cpu, cuda[:N] or tensorrt[:N] (ONNX Runtime), a GPU index (TensorRT), "
    "CPU/GPU (OpenVINO), cpu or cuda (PyTorch).",
)
IMG_SIZE = option("--img-size", help="Input size, N or HxW (default: the model's, 224).")
NUM_CLASSES = option("--num-classes", type=click.IntRange(min=1), help="Number of output classes.")
MODEL_OPTIONS = option(
    "-O",
    "--option",
    "options",
    multiple=True,
    metavar="KEY=VALUE",
    help="Any other model option (or factory argument), e.g. -O reduction=8 -O 'widths=(32,64,128)' (repeatable).",
)
"""Options shared by the commands that build a model (info, export, train)."""


def batch_option(help: str, **kwargs: Any) -> Callable[[Any], Any]:
    """--batch: the batch size a command runs at (bench: several, comma-separated)."""
    kwargs.setdefault("type", click.IntRange(min=1))
    return option("--batch", help=help, **kwargs)


# ---- value parsers --------------------------------------------------------------------------------------------


def parse_img_size(value: str | None) -> tuple[int, int] | None:
    """``N`` or ``HxW`` -> (H, W); a usage error otherwise."""
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


def parse_options(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``-O KEY=VALUE`` pairs -> keyword arguments (values as Python literals where they parse)."""
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


def parse_floats(value: str | None, option: str) -> tuple[float, ...] | None:
    """A comma-separated list of numbers (``--mean``, ``--std``)."""
    if value is None:
        return None
    try:
        return tuple(float(part) for part in value.split(","))
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not a comma-separated list of numbers", param_hint=option
        ) from None


def parse_batch_sizes(value: str | None, option: str = "--preferred-batch") -> tuple[int, ...]:
    """A comma-separated list of batch sizes (empty when not given)."""
    if not value:
        return ()
    try:
        sizes = tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise click.BadParameter(f"{value!r} is not a list of batch sizes; use e.g. 4,8", param_hint=option)
    return sizes


def parse_names(value: str | None, valid: tuple[str, ...], flag: str) -> tuple[str, ...] | None:
    """A comma-separated list of names from ``valid`` (None when not given)."""
    if value is None:
        return None
    names = tuple(name.strip().lower() for name in value.split(",") if name.strip())
    unknown = [name for name in names if name not in valid]
    if unknown or not names:
        raise click.BadParameter(
            f"{value!r}: choose from {', '.join(valid)} (comma-separated)", param_hint=flag
        )
    return names
