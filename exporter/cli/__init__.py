"""The `kiln` command line. Each command builds a config, calls one API function and prints a human summary or
--json; errors become one line in one place (group.KilnGroup). One module per command group:

make     export.py (export, optimize), finetune.py, prune.py, quantize.py, build.py (build, export-triton)
check    inspect.py (inspect, doctor), evaluate.py (eval), bench.py
run      predict.py, serve.py, loadtest.py
release  release.py (keygen, sign, verify)
shared   common.py (options, progress, output), describe.py (artifact summaries), vision.py (image helpers)
"""

from __future__ import annotations

import click

from exporter.cli import bench, build, evaluate, export, finetune, inspect, loadtest, predict, prune, quantize, release, serve
from exporter.cli.common import progress
from exporter.cli.group import KilnGroup


@click.group(cls=KilnGroup, name="kiln", epilog="Run 'kiln COMMAND --help' for a command's options and an example.")
@click.version_option(package_name="modelkiln", prog_name="kiln")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines or bars on stderr (results and errors still print).")
def main(quiet: bool) -> None:
    """Kiln: fire a trained model into a fast, verified deployment artifact."""
    progress.reset(quiet=quiet)


for command in (export.export, finetune.finetune, prune.prune, quantize.quantize, export.optimize, build.build,
                build.export_triton, inspect.inspect, evaluate.evaluate, bench.bench, bench.report, inspect.doctor, predict.predict,
                serve.serve, loadtest.loadtest, release.keygen, release.sign, release.verify):
    main.add_command(command)

__all__ = ["main"]
