"""What every `kiln` command shares: the one place errors become one line, output helpers, options."""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Callable

import click

from runtime.artifact import Artifact
from runtime.backends.options import TORCH_DTYPES
from runtime.errors import ConfigError, KilnError


class KilnGroup(click.Group):
    """Turns every KilnError and usage error into one line on stderr and an exit code: the one place."""

    def main(self, args: Any = None, prog_name: str | None = None, **extra: Any) -> Any:  # type: ignore[override]
        extra.pop("standalone_mode", None)
        try:
            rv = super().main(args=args, prog_name=prog_name or "kiln", standalone_mode=False, **extra)
        except KilnError as e:
            fail(str(e), e.exit_code)
        except click.UsageError as e:
            where = f" (see '{e.ctx.command_path} --help')" if e.ctx else ""
            fail(e.format_message() + where, 2)
        except click.ClickException as e:
            fail(e.format_message(), e.exit_code)
        except (click.Abort, KeyboardInterrupt):
            fail("interrupted", 130)
        sys.exit(rv if isinstance(rv, int) else 0)


def fail(message: str, code: int) -> None:
    click.echo("error: " + " ".join(message.split()), err=True)
    sys.exit(code)


def progress(message: str) -> None:
    click.echo(f"[kiln {time.strftime('%H:%M:%S')}] {message}", err=True)


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


def int_list(value: str, what: str) -> list[int]:
    """"1,8,32" -> [1, 8, 32]; anything else is a ConfigError naming the option."""
    try:
        items = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{what} must be comma-separated positive integers, got {value!r}") from None
    if not items or any(v < 1 for v in items):
        raise ConfigError(f"{what} must be comma-separated positive integers, got {value!r}")
    return items


json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
force_option = click.option("--force", is_flag=True, help="Replace a non-empty output directory.")
backend_option = click.option("--backend", default="auto", show_default=True,
                              help="auto, onnxruntime or torch (comma-separated for bench).")
device_option = click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
dtype_option = click.option("--dtype", type=click.Choice(TORCH_DTYPES), default=None,
                            help="torch backend: weights and compute precision (default float32).")
cuda_graphs_option = click.option("--cuda-graphs", is_flag=True,
                                  help="torch backend on cuda: capture one CUDA graph per input shape, then replay it.")

data_options = [
    click.option("--text-column", default="text", show_default=True),
    click.option("--label-column", default="label", show_default=True),
]


def with_options(options: list[Callable[[Any], Any]]) -> Callable[[Any], Any]:
    def apply(f: Any) -> Any:
        for option in reversed(options):
            f = option(f)
        return f
    return apply


def describe(art: Artifact) -> str:
    lines = [f"artifact  {art.path}", f"format    {art.format}", f"task      {art.task}"]
    lines += [f"input     {s.describe()}" for s in art.inputs]
    lines += [f"output    {s.describe()}" for s in art.outputs]
    if art.labels:
        lines.append("labels    " + ", ".join(f"{k}={v}" for k, v in sorted(art.labels.items())))
    trt = art.meta.get("tensorrt")
    if isinstance(trt, dict):  # what built the engine, and for which GPUs: the runtime checks the same record
        from runtime.backends.trt import FLAVOURS, target_text

        flavour = FLAVOURS.get(trt.get("flavour", ""))
        lines.append(f"engine    {flavour.display if flavour else trt.get('flavour')} {trt.get('version')}, "
                     f"for {target_text(trt.get('target', {}))}")
        lines.append(f"precision {trt.get('precision')} (kernels: {', '.join(trt.get('precisions', []))}; "
                     f"flags: {', '.join(trt.get('builder_flags', [])) or 'none'})")
        for i, profile in enumerate(trt.get("profiles", [])):
            lines += [f"profile {i} {n}: min {p['min']}, opt {p['opt']}, max {p['max']}" for n, p in profile.items()]
    for step in art.lineage:
        summary = f"step      {step.stage} ({step.seconds:.1f}s)"
        val = step.metrics.get("validation")
        if val:
            worst = max(o["max_abs"] for o in val["outputs"].values())
            cos = min(o["cosine"] for o in val["outputs"].values())
            summary += f": validated on {val['batches']} batches, max abs diff {worst:.2e}, cosine {cos:.6f}"
        lines.append(summary)
    size = sum(f.stat().st_size for f in art.path.rglob("*") if f.is_file())
    lines.append(f"size      {size / 1e6:.1f} MB in {len(art.files)} files")
    return "\n".join(lines)
