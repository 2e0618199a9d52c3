"""Render a report (already validated) for people: Markdown tables, and PNG plots with matplotlib."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.harness.make import made_markdown
from benchmarks.report import table
from runtime.errors import ConfigError

LATENCY_COLUMNS = ["candidate", "backend", "input", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "throughput",
                   "spread", "rss_added_mb"]
DATA_COLUMNS = ["candidate", "runtime", "sentences_per_s", "wall_s", "batch_p50_ms", "batch_p99_ms", "accuracy",
                "macro_f1", "spread"]


def flagged(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with their spread as a percentage, and NOISY written next to rows too noisy to trust."""
    return [r | {"spread": f"{100 * r['spread']:.1f}%" + (" NOISY" if r["noisy"] else "")} for r in rows]


def peer_ratios(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Each data row with its sentences/s as a ratio to each peer's ('x peer:...' columns)."""
    peers = [r for r in rows if r["candidate"].startswith("peer:")]
    cols = [f"x {p['candidate']}" for p in peers]
    out = [r | {c: f"{r['sentences_per_s'] / p['sentences_per_s']:.2f}" for c, p in zip(cols, peers)
                if p["sentences_per_s"]} for r in rows]
    return out, cols


def paired_ratios(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Each candidate's speed against each peer pass by pass: the peer's wall time over the candidate's in the
    same interleaved pass, where drift hits both alike. The lowest of them is the ratio that survives the
    machine's noise, which a NOISY median ratio cannot promise."""
    peers = [r for r in rows if r["candidate"].startswith("peer:") and r.get("round_wall_s")]
    if not peers:
        return [], []
    strongest = max(peers, key=lambda p: p["sentences_per_s"])
    cols = ["candidate", f"x {strongest['candidate']} per pass", *[f"lowest x {p['candidate']}" for p in peers]]
    out = []
    for r in rows:
        if not r.get("round_wall_s") or len(r["round_wall_s"]) != len(strongest["round_wall_s"]):
            continue
        row = {"candidate": r["candidate"]}
        for p in peers:
            ratios = [pw / cw for pw, cw in zip(p["round_wall_s"], r["round_wall_s"]) if cw]
            if p is strongest:
                row[cols[1]] = ", ".join(f"{x:.2f}" for x in ratios)
            row[f"lowest x {p['candidate']}"] = f"{min(ratios):.2f}" if ratios else ""
        out.append(row)
    return out, cols


def data_groups(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Data rows by pass (a suite may make several: batch 1 and 32, a sample...), in the order they ran."""
    groups: dict[Any, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r.get("pass"), []).append(r)
    return list(groups.values())


def latency_ratios(rows: list[dict[str, Any]], baselines: list[str]) -> list[dict[str, Any]]:
    """Each latency row's speed against each baseline candidate's at the same input ('x LABEL': its p50 / ours)."""
    out = rows
    for b in baselines:
        base = {r["input"]: r["p50_ms"] for r in rows if r["candidate"] == b}
        out = [r | ({f"x {b}": f"{base[r['input']] / r['p50_ms']:.2f}"} if r["input"] in base else {}) for r in out]
    return out


def data_section(raw: list[dict[str, Any]], baselines: list[str], md: bool) -> list[str]:
    """One data pass: its table (ratios to the peers and to the baseline candidates; numerics against the pass's
    reference when it has one), and the pass-by-pass ratios against the peers."""
    rows, peer_cols = peer_ratios(flagged(raw))
    ratio_cols = []
    for b in baselines:
        base = next((r for r in raw if r["candidate"] == b), None)
        if base is not None:
            ratio_cols.append(f"x {b}")
            rows = [r | {f"x {b}": f"{r['sentences_per_s'] / base['sentences_per_s']:.2f}"} for r in rows]
    ratio_cols += peer_cols
    numerics = [c for c in ("model_mb", "max_abs_diff", "agreement") if any(c in r for r in raw)]
    first = raw[0]
    name = f", {first['pass']}" if first.get("pass") else ""
    lines = [f"## End to end on {first['data']}{name} ({first['n']} inputs, sha256 {first['data_sha256'][:12]})", "",
             f"Inputs in, labels out (preprocessing included: tokenization, or image decoding and resizing; "
             f"sentences_per_s counts images for an image model), batch size {first['batch_size']}, "
             f"{first.get('rounds')} interleaved passes per candidate; sentences/s and wall time at the median "
             "pass. Batch latency: Kiln's rows time each model call of its pipeline (preprocessing runs once "
             "per pass before them); a peer's rows time each pipeline call of a batch, tokenization included."
             + (" model_mb: the model's graph and weights." if "model_mb" in numerics else "")
             + (" max_abs_diff / agreement: the largest absolute difference of the outputs (logits) from the "
                "reference candidate's on the same inputs, and the share of inputs given its label."
                if "max_abs_diff" in numerics else ""),
             "", table(rows, DATA_COLUMNS + numerics + ratio_cols, markdown=md), ""]
    paired, paired_cols = paired_ratios(raw)
    if paired:
        lines += ["### Pass by pass against the peers", "",
                  "The passes interleave the candidates, so a slow moment of the machine hits every candidate in "
                  "that pass alike: a peer's wall time over the candidate's in the same pass. The lowest of "
                  "these is the ratio that holds even when the medians above are NOISY.", "",
                  table(paired, paired_cols, markdown=md), ""]
    return lines


def environment_lines(env: dict[str, Any]) -> list[str]:
    v = env.get("versions", {})
    libs = ", ".join(f"{k} {v[k]}" for k in ("onnxruntime", "torch", "transformers", "tokenizers", "numpy", "openvino")
                     if k in v)
    gpus = "; ".join(env.get("gpus") or []) or "none"
    lines = [f"- CPU: {env['cpu']}, {env['cpu_count']} cores, flags {' '.join(env['cpu_flags']) or 'none'}",
             f"- GPU: {gpus}", f"- Kiln {env['kiln']}; {libs}"]
    peers = env.get("peer_versions") or {}  # the peers' own environment(s) (benchmarks/peer/README.md)
    if peers and all(isinstance(v, dict) for v in peers.values()):  # several: {python: versions}
        lines += [f"- Peers' environment {python}: " + ", ".join(f"{k} {v}" for k, v in vs.items())
                  for python, vs in peers.items()]
    elif peers:
        lines.append("- Peers' environment: " + ", ".join(f"{k} {v}" for k, v in peers.items()))
    return lines


def markdown(report: dict[str, Any], md: bool = True) -> str:
    """The report for people; md=False draws the tables as aligned text for a terminal."""
    lines = [f"# {report['config'].get('title') or 'Kiln benchmark'}", "",
             f"Command: `{report['command']}`", "", f"Measured {report['created']}:", "",
             *environment_lines(report["environment"]), ""]
    said = report["config"].get("report") or {}  # a suite's [report]: its notes, and the row ratios are taken to
    baseline = said.get("baseline") or []
    baseline = [baseline] if isinstance(baseline, str) else list(baseline)  # one label, or several (two families)
    baseline_cols = [f"x {b}" for b in baseline]
    if said.get("notes"):
        lines += [str(said["notes"]).strip(), ""]
    if report.get("peak_rss_mb"):
        lines += [f"Peak resident memory of the benchmark process: {report['peak_rss_mb']} MB", ""]
    if report["results"]:
        cfg = report["config"].get("sweep", {})
        lines += ["## Latency (interleaved rounds)", "",
                  f"{cfg.get('warmup')} warm-up runs, then {cfg.get('rounds')} rounds x {cfg.get('per_round')} timed "
                  "runs per configuration, every configuration in each round. Throughput is rows/s at the median; "
                  "spread is the range of the round medians over the median (NOISY above "
                  f"{100 * cfg.get('noisy_spread', 0.1):.0f}%). Image models take one fixed input size: their "
                  "input column names it instead of a sequence length.", "",
                  table(latency_ratios(flagged(report["results"]), baseline), LATENCY_COLUMNS + baseline_cols
                        # a peer's model timed in the sweep (sweep = true): the library and recipe that made it
                        + (["made_by"] if any(r.get("made_by") for r in report["results"]) else []),
                        markdown=md), ""]
    for rows in data_groups(report["data_results"]):
        lines += data_section(rows, baseline, md)
    noisy = [r["candidate"] for r in report["results"] + report["data_results"] if r["noisy"]]
    if noisy:
        lines += [f"Warning: {len(noisy)} row(s) too noisy to trust ({', '.join(sorted(set(noisy)))}); "
                  "re-run on a quiet machine before drawing conclusions.", ""]
    return "\n".join(lines + made_markdown(report["config"]))


def plot_latency(report: dict[str, Any], path: Path) -> Path | None:
    """p50 latency against batch size, one line per candidate (and sequence length)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on CI machines
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[int, float, float]]] = {}
    for r in report["results"]:
        name = r["candidate"] + (f" (seq {r['seq_len']})" if r["seq_len"] is not None else "")
        series.setdefault(name, []).append((r["batch"], r["p50_ms"], r["p99_ms"]))
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, pts in series.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("p50 latency per batch (ms)")
    ax.set_title("Latency against batch size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points no other point beats on both throughput and accuracy (higher is better for both)."""
    return [i for i, (x, y) in enumerate(points)
            if not any(x2 >= x and y2 >= y and (x2, y2) != (x, y) for x2, y2 in points)]


def plot_pareto(report: dict[str, Any], path: Path) -> Path | None:
    """Accuracy against sentences/s, every candidate a point, the Pareto front joined."""
    groups = data_groups(report["data_results"])
    if not groups:
        return None
    rows = max(groups, key=len)  # one pass's points (several passes would draw each candidate twice)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [(r["sentences_per_s"], 100 * r["accuracy"]) for r in rows]
    front = sorted(pareto_front(pts), key=lambda i: pts[i][0])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r, (x, y) in zip(rows, pts):
        peer = r["candidate"].startswith("peer:")
        ax.scatter([x], [y], marker="s" if peer else "o", color="grey" if peer else "tab:blue", zorder=3)
        ax.annotate(r["candidate"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "--o", color="tab:orange", mfc="none", ms=12,
            label="Pareto front")
    ax.set_xscale("log")  # ratios read as distances: 2x faster is the same step anywhere
    ax.set_xlabel("sentences/s (end to end, log scale)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"Accuracy against throughput on {rows[0]['data']}"
                 + (f" ({rows[0]['pass']})" if rows[0].get("pass") else ""))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def check_plotting() -> None:
    """Plots need matplotlib (the `bench` extra): say so in one line, before any minutes are spent measuring."""
    import importlib.util

    from runtime.errors import ConfigError

    if importlib.util.find_spec("matplotlib") is None:
        raise ConfigError("writing a report folder (-o) draws PNG plots with matplotlib, which is not installed: "
                          "pip install 'modelkiln[bench]' (or leave out -o and use --json)")


def render(report: dict[str, Any], out_dir: Path, name: str = "report") -> list[Path]:
    """Write NAME.md and the plots into out_dir; return the paths written."""
    check_plotting()
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / f"{name}.md"
    md.write_text(markdown(report))
    written = [md]
    for fn, suffix in ((plot_latency, "latency"), (plot_pareto, "pareto")):
        p = fn(report, out_dir / f"{name}-{suffix}.png")
        if p:
            written.append(p)
    return written


def check_out_dir(out: Path) -> None:
    """-o must be a folder this process can write: said before minutes of measuring, not after."""
    import os

    if out.is_symlink() and not out.is_dir():
        raise ConfigError(f"-o {out} is a link to nothing (or to a file); give a folder for the report")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"-o {out} is a file; give a folder for the report")
    if (out / "manifest.json").exists():  # --force (or a suite's own out) would replace the artifact's files
        raise ConfigError(f"{out} is a Kiln artifact (manifest.json); give another folder for the report")
    parent = out.absolute()
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"-o {out}: {parent} is not a folder this user can write; give another -o")


# an unstamped staging folder (`.kiln-tmp-*`, written by Kiln before its names said their owner) lives only
# while a report's files are written (seconds): one untouched this long was left by a killed run
UNSTAMPED_STALE_SECONDS = 300


def report_files(name: str) -> tuple[str, ...]:
    """Every file a report named `name` can write (write_outputs, render)."""
    return (f"{name}.json", f"{name}.md", f"{name}-latency.png", f"{name}-pareto.png")


def remove_stale_staging(out: Path) -> list[Path]:
    """Remove the staging folders in `out` that a run killed while writing its report left: stamped ones whose
    owner process (on this host) is gone, unstamped ones untouched for UNSTAMPED_STALE_SECONDS."""
    import shutil
    import time

    from exporter.staging import remove_stale  # the stages' owner-stamped staging names (stdlib only)

    removed = remove_stale(out) if out.is_dir() else []
    for entry in out.glob(".kiln-tmp-*"):
        try:
            stale = entry.is_dir() and not entry.is_symlink() and \
                time.time() - entry.stat().st_mtime > UNSTAMPED_STALE_SECONDS
        except OSError:
            continue
        if stale:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


CLAIM = "report"  # the staging folder a run holds in -o while it measures: .report.kiln-tmp-HOST-PID-...


def prepare_out_dir(out: Path, force: bool, name: str = "bench") -> tuple[Path, Path | None]:
    """`kiln bench -o`: a writable folder, stale staging folders removed, and one already holding files only
    with --force (two runs' files would mix) -- said before minutes of measuring. Returns this run's claim on
    the folder (its staging folder, made now, in which write_outputs later writes) and the first folder of `out`
    it created (None: `out` existed), for release_out_dir. Of runs started together on one -o only the earliest
    goes on (the others would silently replace its report)."""
    import shutil

    from exporter.staging import OWNED, earlier_writer, make_staging_dir

    check_out_dir(out)
    remove_stale_staging(out)
    held = sorted(p.name for p in out.iterdir() if not OWNED.match(p.name)) if out.is_dir() else []
    if held and not force:
        shown = ", ".join(held[:5]) + (f" (+{len(held) - 5} more)" if len(held) > 5 else "")
        raise ConfigError(f"-o {out} already holds files ({shown}); pass --force to write this report there "
                          "(its files of the same report name are replaced), or give an empty folder")
    created = out.absolute()
    while not created.parent.exists():
        created = created.parent
    created = None if created.exists() else created
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"-o {out}: cannot create it ({e.strerror}); give another folder") from None
    # one claim name for every report name: two runs writing different reports into one folder mix too
    claim = make_staging_dir(out / CLAIM)
    other = earlier_writer(out / CLAIM, claim)
    if other is not None:
        shutil.rmtree(claim, ignore_errors=True)
        raise ConfigError(f"-o {out}: another kiln bench (pid {other}) is writing its report there; wait for it "
                          "to finish, or give another folder")
    return claim, created


def release_out_dir(claim: Path, created: Path | None) -> None:
    """The end of a run that prepare_out_dir admitted: its claim goes, and so do the folders it created for -o
    when no file ended up in them (a failed run leaves no empty -o behind)."""
    import shutil

    shutil.rmtree(claim, ignore_errors=True)
    if created is not None and not any(p.is_file() for p in created.rglob("*")):
        shutil.rmtree(created, ignore_errors=True)


def write_outputs(report: dict[str, Any], out: Path, name: str, staged: Path | None = None) -> list[Path]:
    """NAME.json (the report), NAME.md and the plots in `out`, each file whole: written in a staging folder
    inside `out` and renamed into place, so a reader (or a second run writing the same -o) never sees half a file.
    An earlier report's file of the same name that this one does not write (a plot) is removed: no mixing."""
    import json
    import os
    import shutil

    from exporter.staging import make_staging_dir

    out.mkdir(parents=True, exist_ok=True)
    # owner-stamped (.NAME.kiln-tmp-HOST-PID-...): a later run removes it if this process is killed here;
    # kiln bench made it before measuring, as its claim on the folder (prepare_out_dir)
    staged = staged or make_staging_dir(out / name)
    try:
        (staged / f"{name}.json").write_text(json.dumps(report, indent=2, allow_nan=False))
        files = [staged / f"{name}.json", *render(report, staged, name)]
        for f in files:
            os.replace(f, out / f.name)
        for old in set(report_files(name)) - {f.name for f in files}:
            (out / old).unlink(missing_ok=True)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return [out / f.name for f in files]
