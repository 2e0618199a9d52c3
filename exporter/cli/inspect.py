"""`kiln inspect` (what an artifact is and how it was made) and `kiln doctor` (what this machine can run)."""

from __future__ import annotations

from pathlib import Path

import click

from exporter.cli.common import emit, example, json_option, progress
from exporter.cli.describe import describe
from runtime.artifact import Artifact


@click.command(epilog=example("kiln inspect ft-int8", "kiln inspect ft-int8 --verify --json"))
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--verify", is_flag=True,
              help="Recompute every file's sha256, and the manifest's own digests, against what was recorded.")
@json_option
def inspect(artifact: Path, verify: bool, as_json: bool) -> None:
    """Show an artifact's inputs, outputs and lineage: how each step made it (method, fusion, nodes kept in fp32)."""
    art = Artifact.load(artifact)
    data = art.to_manifest() | {"path": str(art.path.absolute())}
    note = ""
    if verify:
        covered = art.check_integrity()  # raises, naming every changed file and field
        data["verified"], data["manifest_verified"] = True, covered
        note = ("\nverified  all files and the manifest match what was recorded" if covered else
                "\nverified  all files match the manifest; manifest not covered (made by an older Kiln; "
                "re-run the stage to record its digests)")
    emit(data, as_json, lambda: describe(art) + note)


@click.command(epilog=example("kiln doctor", "kiln doctor --json", "kiln doctor --measure ft-int8 --measure ft-nncf-ov"))
@click.option("--measure", "measure_paths", multiple=True, type=click.Path(path_type=Path),
              help="An onnx or openvino artifact (repeatable): time every backend/precision that runs it, pick the fastest.")
@json_option
def doctor(measure_paths: tuple[Path, ...], as_json: bool) -> None:
    """Check what this machine can run, and say what to install for each missing piece."""
    from exporter.doctor import openvino_capabilities, run_checks

    checks = run_checks()
    text = "\n".join(f"{'ok ' if c['ok'] else '-- '} {c['name']:<14} {c['detail']}"
                     + ("" if c["ok"] else f"\n     fix: {c['fix']}") for c in checks)
    if not measure_paths:
        emit(checks, as_json, lambda: text)
        return
    from exporter.doctor_measure import format_measure, measure

    report = measure(list(measure_paths), openvino_capabilities(), progress=progress)
    emit({"checks": checks, "measure": report}, as_json, lambda: text + "\n\n" + format_measure(report))
