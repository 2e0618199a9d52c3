"""What every `kiln` command shares: the one place errors become one line, progress, output, and the option
vocabulary (one spelling per idea across commands: --data, --eval-data, --calib-data, -o, --backend, ...)."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable

import click

from exporter.progress import Ticker
from runtime.backends.options import TORCH_DTYPES
from runtime.errors import KilnError
from runtime.session import BACKENDS, DEVICES

# the one list of backends a command offers: runtime.session.BACKENDS (a new backend appears here by itself)
BACKEND_CHOICES = ("auto", *BACKENDS)
# loggers of libraries whose warnings `kiln -q` silences (errors still show)
QUIETED_LOGGERS = ("onnxruntime.transformers",)


def fail(message: str, code: int) -> None:
    progress.end_bar()
    click.echo("error: " + " ".join(message.split()), err=True)
    sys.exit(code)


class Reporter:
    """The CLI's progress callback: timestamped lines on stderr, a bar for ticked phases on a terminal (a line
    every few seconds otherwise), nothing with --quiet. stdout stays for results (--json)."""

    def __init__(self) -> None:
        self.reset(quiet=False)

    def reset(self, quiet: bool) -> None:
        self.quiet, self.bar_open, self.tickers = quiet, False, {}
        # libraries' own notes (onnxruntime's fusion warnings) are progress-like chatter: -q silences them too;
        # NOTSET hands the level back to the root logger for a later command in the same interpreter (tests)
        for name in QUIETED_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR if quiet else logging.NOTSET)

    def __call__(self, message: str) -> None:
        if not self.quiet:
            self.end_bar()
            click.echo(f"[kiln {time.strftime('%H:%M:%S')}] {message}", err=True)

    def tick(self, label: str, done: int, total: int) -> None:
        if self.quiet:
            return
        if not click.get_text_stream("stderr").isatty():  # a log file: a line now and then, not a bar
            plain = self.tickers.get(label)
            if plain is None or done <= plain.done:  # a new pass of the same phase (each evaluation): its own clock
                plain = self.tickers[label] = Ticker(lambda m: self(m), label, total)
            plain.update(done)
            return
        filled = int(30 * done / max(total, 1))
        click.echo(f"\r[kiln] {label} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total}", err=True, nl=False)
        self.bar_open = done < total
        if not self.bar_open:
            click.echo("", err=True)

    def end_bar(self) -> None:
        if self.bar_open:
            click.echo("", err=True)
            self.bar_open = False


progress = Reporter()


def emit(data: Any, as_json: bool, human: Callable[[], str]) -> None:
    if not as_json:
        click.echo(human())
        return
    try:
        # allow_nan=False: Python would write NaN/Infinity, which no JSON parser accepts
        text = json.dumps(data, indent=2, default=str, allow_nan=False)
    except ValueError as e:
        if "Out of range float" not in str(e):  # a circular reference is a bug, not a user's problem
            raise
        raise KilnError("the result holds NaN or infinity, which JSON cannot represent; nothing was printed "
                        "(run without --json to see the values)") from None
    click.echo(text)


class Aliased(click.Option):
    """An option whose older spellings (`old`) still work but are left out of --help."""

    def __init__(self, *args: Any, old: tuple[str, ...] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.old = old

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        shown = self.opts
        self.opts = [o for o in shown if o not in self.old]
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts = shown


def choice(values: Any) -> click.Choice:
    return click.Choice(list(values))


json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout.")
force_option = click.option("--force", is_flag=True, help="Replace a non-empty output directory.")
backend_option = click.option("--backend", type=choice(BACKEND_CHOICES), default="auto", show_default=True,
                              help="Runtime backend (auto: the one for the artifact's format).")
device_option = click.option("--device", type=choice(DEVICES), default="cpu", show_default=True,
                             help="Where the model runs.")
dtype_option = click.option("--dtype", type=choice(TORCH_DTYPES), default=None,
                            help="torch: weights and compute precision; openvino: inference precision (default float32).")
cuda_graphs_option = click.option("--cuda-graphs", is_flag=True,
                                  help="torch backend on cuda: capture one CUDA graph per input shape, then replay it.")
text_column_option = click.option("--text-column", default="text", show_default=True, help="The data's text column.")
label_column_option = click.option("--label-column", default="label", show_default=True,
                                   help="The data's label column.")


def output_option(what: str = "Artifact directory to write.") -> Callable[[Any], Any]:
    return click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path),
                        help=what)


def batch_size_option(default: int | None, what: str = "Inputs per model call.") -> Callable[[Any], Any]:
    return click.option("--batch-size", default=default, show_default=default is not None, type=click.IntRange(min=1),
                        help=what)


def data_option(what: str, required: bool = False, **kwargs: Any) -> Callable[[Any], Any]:
    return click.option("--data", required=required, help=what, **kwargs)


def eval_data_option(what: str) -> Callable[[Any], Any]:
    """--eval-data everywhere (--eval, its old spelling on finetune and prune, still works)."""
    return click.option("--eval-data", "--eval", "eval_data", cls=Aliased, old=("--eval",), help=what)


def calib_data_option(what: str) -> Callable[[Any], Any]:
    return click.option("--calib-data", help=what)


backend_option_option = click.option(
    "--backend-option", "backend_options", multiple=True, metavar="KEY=VALUE",
    help="A backend option the other flags do not cover, repeatable, e.g. static_cache=4 for openvino "
         "(names: runtime/backends/options.py; an unknown one is refused).")


# settings with their own flag (one way to set each: given both ways, which would win?), and ones no command
# line can hold (torch's in-memory module)
FLAGGED_OPTIONS = {"threads": "--threads", "dtype": "--dtype", "cuda_graphs": "--cuda-graphs",
                   "spinning": "--spinning/--no-spinning"}
NOT_FROM_THE_COMMAND_LINE = ("model",)


def parse_backend_options(items: tuple[str, ...]) -> dict[str, Any]:
    """`KEY=VALUE` strings -> a dict; values read as int, float, true/false, else text. Whether the backend
    takes the key, and the value's type, are checked where the backend's options are built."""
    from runtime.errors import ConfigError

    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip() or not text.strip():
            raise ConfigError(f"--backend-option wants KEY=VALUE (e.g. static_cache=4), got {item!r}")
        key = key.strip()
        if key in FLAGGED_OPTIONS:
            raise ConfigError(f"--backend-option {key}=...: {key} has its own flag; use {FLAGGED_OPTIONS[key]}")
        if key in NOT_FROM_THE_COMMAND_LINE:
            raise ConfigError(f"--backend-option {key}=...: {key} is set from the artifact, not the command line")
        if key in out:
            raise ConfigError(f"--backend-option {key} is given twice; give each option once")
        value: Any = text.strip()
        for convert in (int, float):
            try:
                value = convert(value)
                break
            except ValueError:
                pass
        if isinstance(value, str) and value.lower() in ("true", "false"):
            value = value.lower() == "true"
        out[key] = value
    return out


def data_options(f: Any) -> Any:
    return text_column_option(label_column_option(f))


def given_options(ctx: click.Context) -> dict[str, str]:
    """The options the user set (command line or environment), name -> the spelling to name it by in an error
    (the flag of an on/off pair that was used); options left at their defaults are not in it."""
    from click.core import ParameterSource

    given = {}
    for p in ctx.command.params:
        if isinstance(p, click.Option) and ctx.get_parameter_source(p.name) in (  # type: ignore[arg-type]
                ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT):
            opts = p.secondary_opts if p.secondary_opts and ctx.params.get(p.name) is False else p.opts
            given[str(p.name)] = max(opts, key=len)  # --per-tensor, --output (not -o)
    return given


def example(*lines: str) -> str:
    """A command's help epilog: a few commands to copy (\b keeps Click from re-wrapping them)."""
    return "\b\nExample:\n" + "\n".join(f"  {line}" for line in lines)


def int_list(value: str, what: str) -> list[int]:
    """`1,8,32` -> [1, 8, 32]; anything else is a ConfigError naming the option."""
    from runtime.errors import ConfigError

    try:
        items = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{what} must be comma-separated positive integers, got {value!r}") from None
    if not items or any(v < 1 for v in items):
        raise ConfigError(f"{what} must be comma-separated positive integers, got {value!r}")
    return items
