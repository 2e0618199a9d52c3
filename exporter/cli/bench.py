"""`kiln bench` and `kiln report`: thin wiring over benchmarks.harness (all logic lives there)."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path
from typing import Any

import click

from exporter.cli.common import (
    backend_option_option, cuda_graphs_option, device_option, dtype_option, emit, example, force_option, int_list,
    json_option, parse_backend_options, progress,
)
from runtime.errors import ConfigError


def command_line(ctx: click.Context) -> str:
    """The command as typed, less options left at their defaults (the report's first line: rerun it)."""
    parts = [ctx.command_path]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if isinstance(param, click.Argument):
            parts += [str(v) for v in value or ()]
        elif not (value is None or value is False or value == () or
                  (value == param.default and type(value) is type(param.default))):  # 0 is a value, not False
            if value is True:
                parts.append(param.opts[0])
            elif getattr(param, "multiple", False):  # a repeatable option: once per value, as typed
                for v in value:
                    parts += [param.opts[0], str(v)]
            else:
                parts += [param.opts[0], str(value)]
    return " ".join([parts[0], *(shlex.quote(p) for p in parts[1:])])


def gate(report: dict[str, Any], baseline: dict[str, Any], where: Path, budget: Any, as_json: bool) -> None:
    """Compare with the baseline: print the diff table, then one line; a broken budget exits non-zero."""
    from benchmarks.harness.gate import GateFailed, broken, compare, summary
    from benchmarks.report import table

    rows = compare(baseline, report, budget)
    report["gate"] = {"baseline": str(where), "rows": rows, "summary": summary(rows, budget)}
    click.echo(table(rows, ["row", "metric", "baseline", "current", "change", "noise", "status"]), err=as_json)
    if broken(rows):
        if as_json:
            click.echo(json.dumps(report, indent=2))
        raise GateFailed(report["gate"]["summary"])
    click.echo(report["gate"]["summary"], err=as_json)


@click.command(epilog=example(
    "kiln bench ft-onnx ft-int8 --batch-sizes 1,8,32 -o bench-out",
    "kiln bench ft-onnx ft-int8 --data movie-snippets:test --baseline old.json --max-latency-regression 10%",
    "kiln bench --suite ci -o ci-report"))
@click.argument("artifacts", nargs=-1, type=click.Path(path_type=Path))
@click.option("--suite", help="Run benchmarks/suites/NAME.toml (ci, release, peers) or a .toml path instead of ARTIFACTS.")
@click.option("--batch-sizes", help="Comma-separated batch sizes to sweep [default: 1,8,32; none with --data alone].")
@click.option("--seq-len", "--seq-lens", "seq_lens", help="Comma-separated sequence lengths (text models) "
              "[default: min(128, each artifact's max length)]. Image models take their one fixed image size.")
@click.option("--backend", default="auto", show_default=True,
              help="Comma-separated: auto, onnxruntime, openvino, torch; every artifact runs on each.")
@device_option
@click.option("--warmup", default=5, show_default=True, type=int, help="Untimed runs per configuration first.")
@click.option("--iters", default=30, show_default=True, type=int,
              help="Timed runs per configuration, all rounds together (each round runs iters // rounds, at least 1; "
                   "the report's iters says how many ran).")
@click.option("--rounds", default=5, show_default=True, type=int,
              help="Interleave every configuration in this many rounds (fair under drift; spread = noise).")
@click.option("--threads", default=0, show_default=True, type=int, help="Intra-op threads (0: the backend's default).")
@dtype_option
@backend_option_option
@cuda_graphs_option
@click.option("--data", help="Labelled data (a file or NAME:SPLIT, e.g. movie-snippets:test): classify all of it "
              "end to end per artifact; reports inputs/s, wall time, accuracy, macro-F1.")
@click.option("--data-batch-size", default=32, show_default=True, type=int,
              help="--data: the pipeline's batch size (texts are length-sorted into batches of this size).")
@click.option("--baseline", type=click.Path(path_type=Path), help="A previous report (JSON) to gate against.")
@click.option("--max-latency-regression", help="Latency budget against --baseline, e.g. 10%.")
@click.option("--max-accuracy-drop", type=float, help="Accuracy budget against --baseline, in points (0.5 = 0.5%).")
@click.option("-o", "--output", "out", type=click.Path(path_type=Path),
              help="Write NAME.json, NAME.md and plots here.")
@click.option("--markdown", is_flag=True, help="Print Markdown tables.")
@force_option
@json_option
def bench(artifacts: tuple[Path, ...], suite: str | None, batch_sizes: str | None, seq_lens: str | None, backend: str,
          device: str, warmup: int, iters: int, rounds: int, threads: int, dtype: str | None, cuda_graphs: bool,
          backend_options: tuple[str, ...],
          data: str | None, data_batch_size: int, baseline: Path | None, max_latency_regression: str | None,
          max_accuracy_drop: float | None, out: Path | None, markdown: bool, force: bool, as_json: bool) -> None:
    """Benchmark ARTIFACTS side by side: latency sweeps and/or end to end on labelled data, interleaved rounds."""
    from benchmarks.harness import BenchPlan, DataConfig, SweepConfig, run_bench
    from benchmarks.harness.render import markdown as render_md
    from benchmarks.harness.run import backend_names, default_candidates
    from benchmarks.harness.suites import check_paths, load_suite
    from runtime.backends.options import torch_only

    name = "bench"
    if (max_latency_regression or max_accuracy_drop is not None) and not baseline:
        raise ConfigError("--max-latency-regression / --max-accuracy-drop are budgets against a previous report: "
                          "add --baseline old.json")
    if suite:
        if artifacts:
            raise ConfigError("give either --suite or ARTIFACTS, not both (a suite names its own artifacts)")
        if backend_options:
            raise ConfigError("--backend-option applies to ARTIFACTS; a suite sets each candidate's options in its "
                              "file (options = {static_cache = 4})")
        plan, settings = load_suite(suite, make=False)  # read and checked now; its [[make]] steps run below
        if plan.peers:  # a missing or broken peer Python is said before minutes of making artifacts
            from benchmarks.harness.peers import check_peers

            check_peers(plan.peers)
        if out is None:  # the suite's own folder: a rerun replaces its report there (an -o you name needs --force)
            out, force = settings["out"], True
        name = settings["name"]
        max_latency_regression = max_latency_regression or settings["gate"].get("max_latency_regression")
        if max_accuracy_drop is None:
            max_accuracy_drop = settings["gate"].get("max_accuracy_drop")
    else:
        if not artifacts:
            raise ConfigError("name at least one ARTIFACT, or --suite NAME")
        names = backend_names(backend)
        options = ({"threads": threads} if threads else {}) | parse_backend_options(backend_options)
        cands = default_candidates([str(a) for a in artifacts], names, device, options,
                                   torch_only(names, device, dtype, cuda_graphs))
        sweep = None
        if batch_sizes or seq_lens or not data:
            if iters < 1:
                raise ConfigError(f"--iters must be >= 1, got {iters}")
            per_round = max(1, iters // max(rounds, 1))
            sweep = SweepConfig(tuple(int_list(batch_sizes or "1,8,32", "--batch-sizes")),
                                tuple(int_list(seq_lens, "--seq-len")) if seq_lens else (), warmup, rounds, per_round)
        data_cfg = DataConfig(data, data_batch_size, min(warmup, 1), rounds) if data else None
        plan = BenchPlan(cands, sweep, data_cfg)
    base_report = budget = None
    if baseline:  # read and check the baseline and budgets before spending minutes measuring
        from benchmarks.harness.gate import Budget, parse_percent
        from benchmarks.harness.schema import load_report

        budget = Budget(parse_percent(max_latency_regression, "--max-latency-regression"), max_accuracy_drop)
        base_report = load_report(baseline)
    claim = None
    if out:
        from benchmarks.harness.render import check_plotting, prepare_out_dir

        check_plotting()
        claim = prepare_out_dir(Path(out), force, name)
    try:
        if suite:  # after -o and --baseline are known good: making artifacts can take minutes
            plan, settings = load_suite(suite, progress)
            check_paths(settings)  # a missing artifact names the KILN_* variable the suite reads for it
        report = run_bench(plan, command_line(click.get_current_context()), progress)
        if out:
            from benchmarks.harness.render import write_outputs

            for p in write_outputs(report, Path(out), name, claim[0]):
                progress(f"wrote {p}")
    finally:
        if claim is not None:
            from benchmarks.harness.render import release_out_dir

            release_out_dir(*claim)
    if base_report is not None:
        gate(report, base_report, baseline, budget, as_json)
    emit(report, as_json, lambda: render_md(report, md=markdown))


@click.command(epilog=example("kiln report bench-out/bench.json -o bench-out"))
@click.argument("results", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out", type=click.Path(path_type=Path), required=True,
              help="Folder for the Markdown and plots.")
def report(results: Path, out: Path) -> None:
    """Re-render a benchmark report (JSON from `kiln bench`) as Markdown and PNG plots."""
    from benchmarks.harness.render import check_out_dir, render
    from benchmarks.harness.schema import load_report
    from runtime.errors import ValidationError

    data = load_report(results)
    check_out_dir(out)
    existed = out.exists()
    try:
        written = render(data, out, results.stem)
    except (TypeError, ValueError, AttributeError, KeyError, IndexError, RecursionError) as e:
        if not existed:
            shutil.rmtree(out, ignore_errors=True)  # nothing half-written
        raise ValidationError(f"report {results} passes the schema but cannot be rendered: "
                              f"{type(e).__name__}: {str(e)[:160]}") from None
    for p in written:
        click.echo(str(p))
