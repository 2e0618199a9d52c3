"""Suites: a benchmark plan written down in benchmarks/suites/NAME.toml, run by `kiln bench --suite NAME`.

    title = "..."                       # heads the Markdown report
    out = "benchmarks/work/bench/NAME"  # where the report goes unless -o says otherwise
    prepare = {ci-model = "benchmarks/work/ci-model"}   # artifacts built on first use (harness/ci_model.py)
    [[candidate]]  artifact, backend ("auto"), device ("cpu"), label, options = {threads = 2}
    [sweep]        batch_sizes, seq_lens, warmup, rounds, per_round, noisy_spread   (omit: no latency sweep)
    [data]         source, batch_size, warmup, rounds, text_column, label_column    (omit: no real-data pass)
                   sample (N inputs drawn with seed 0), reference (a label: max_abs_diff / agreement against it),
                   candidates (the labels, peers' too, in this pass; default all), name
    [[data]]       several passes, each such a table (e.g. batch 1 and batch 32); rows say their pass
    [sweep]        ... candidates = [labels] times only those
    [report]       baseline (a candidate label, or a list: "x LABEL" speed ratio columns), notes (text under the title)
    [[peer]]       kind, model, python, batch_size, label, work_dir, calib_data, calib_samples,
                   sweep (true: also time the peer's model alone in [sweep], as "LABEL (model)"; not for
                   transformers-eager), like (the candidate label whose artifact lends that model its tokenizer,
                   specs and labels; default the first candidate)
    [gate]         max_latency_regression ("10%"), max_accuracy_drop (points)
    [vars]         NAME = "value" (may use ${ENV}, ${ENV:-default}, earlier vars); ${NAME} anywhere else
    [[make]]       out, run ("kiln quantize ${FP32} --method dynamic-int8 -o {out}"), may_fail (false)

Strings may use ${VAR} or ${VAR:-default}, so paths are configurable per machine; relative paths are
relative to the repository root (where CI runs). A [vars] name is looked up before the environment (write
FP32 = "${FP32:-...}" to let the environment override it).

[[make]] steps (benchmarks/harness/make.py) make the artifacts the suite measures, in order, after `prepare` and
before measuring: `run` is a kiln command that makes an artifact (export, finetune, prune, quantize, optimize,
build, export-triton; a string or a list) and writes it with -o {out} ({out} is the step's out). A string is
split into words before ${...} is substituted, so a value is one word whatever it holds (spaces included). It
runs from the repository root with HF_HUB_OFFLINE=1 (a step reading a failed step's out fails with it). A step
is skipped when the record beside its out (.OUT.make.json, written after success) says the same command made
what is there from the same inputs: fingerprints (each file's path, size and time) of the output and of every
file or folder the command names. Otherwise it is made again, with --force over what an earlier step made; a
folder holding files that no step made is never replaced (one line says so), and no two steps' outs may be
the same folder or one inside the other. A failing step is an error unless may_fail = true: then the
candidates measuring its out are left out and the report says why. The report's config.make lists each
step's {out, command, status: made | reused | failed, seconds, error?, dropped?}."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Any, Callable

from benchmarks.harness.candidates import Candidate, Peer
from benchmarks.harness.make import kept_candidates, leave_out, parse_steps, run_steps, with_vars
from benchmarks.harness.peers import DEFAULT_PEER_PYTHON
from benchmarks.harness.realdata import DataConfig
from benchmarks.harness.run import BenchPlan
from benchmarks.harness.sweep import SweepConfig
from runtime.errors import ConfigError, KilnError

SUITES = Path(__file__).resolve().parents[1] / "suites"
ROOT = SUITES.parents[1]
TOP_KEYS = {"title", "out", "prepare", "candidate", "sweep", "data", "peer", "gate", "report", "vars", "make"}
REPORT_KEYS = {"baseline", "notes"}
NAMED_DATA = re.compile(r"^[\w-]+:\w+$")
NUMBER = re.compile(r"^-?\d+(\.\d+)?$")
VAR = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def substitute(value: Any, replace: Any) -> Any:
    """Every string in a suite value (lists and tables walked) with its ${...} replaced by replace(match); a string
    that became a number is one (rounds = "${KILN_BENCH_ROUNDS:-5}"; a var ROUNDS = 5 in "${ROUNDS}")."""
    if isinstance(value, str):
        out = VAR.sub(replace, value)
        if out != value and not VAR.search(out) and NUMBER.match(out):
            return float(out) if "." in out else int(out)
        return out
    if isinstance(value, list):
        return [substitute(v, replace) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, replace) for k, v in value.items()}
    return value


def expand(value: Any) -> Any:
    """${VAR} / ${VAR:-default} in strings (recursively); an unset variable without a default is an error."""
    def env(m: re.Match[str]) -> str:
        if m.group(1) in os.environ:
            return os.environ[m.group(1)]
        if m.group(2) is None:
            raise ConfigError(f"suite value {m.group(0)!r} needs ${m.group(1)}, which is not set")
        return m.group(2)

    return substitute(value, env)


def rooted(path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else ROOT / p


def suite_path(name: str) -> Path:
    p = Path(name)
    if p.suffix == ".toml" or p.is_file():
        return p
    path = SUITES / f"{name}.toml"
    if not path.is_file():
        known = sorted(f.stem for f in SUITES.glob("*.toml"))
        raise ConfigError(f"no suite {name!r}; suites in {SUITES}: {', '.join(known)} (or give a .toml path)")
    return path


def build(cls: type, table: dict[str, Any], where: str, **fixed: Any) -> Any:
    """cls(**table), an unknown key an error that lists the valid ones."""
    import dataclasses

    valid = [f.name for f in dataclasses.fields(cls) if f.name not in fixed and f.name != "extra"]
    unknown = sorted(set(table) - set(valid))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
    try:
        return cls(**table, **fixed)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None


def load_suite(name: str, progress: Callable[[str], None] | None = None,
               make: bool = True) -> tuple[BenchPlan, dict[str, Any]]:
    """The plan a suite describes, and its settings (out, gate); a value of the wrong shape is one line. Its
    `prepare` and [[make]] steps run here (progress: one line per step, and the steps' own progress unless it is
    quiet); make=False only reads and checks the file (before minutes of making, or to list what it would run)."""
    try:
        return _load_suite(name, progress, make)
    except KilnError:
        raise
    except (TypeError, ValueError, AttributeError, KeyError) as e:
        raise ConfigError(f"suite {suite_path(name)}: a value has the wrong type or shape ({e}); "
                          "see benchmarks/harness/suites.py for the format") from None


def _load_suite(name: str, progress: Callable[[str], None] | None, make: bool) -> tuple[BenchPlan, dict[str, Any]]:
    import tomllib

    path = suite_path(name)
    if not path.is_file():
        raise ConfigError(f"suite file {path} does not exist")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"suite {path} does not parse: {e}") from None
    # a step's run is split into words before ${...} is substituted, so a value is one word however many spaces
    # it holds (a work folder with a space; a value cannot smuggle in a flag)
    for i, t in enumerate(raw.get("make", []) if isinstance(raw.get("make"), list) else []):
        if isinstance(t, dict) and isinstance(t.get("run"), str):
            try:
                t["run"] = shlex.split(t["run"])
            except ValueError as e:
                raise ConfigError(f"suite {path}: make step {i + 1}: run {t['run']!r} does not split into words "
                                  f"({e})") from None
    # [vars] substituted, ${ENV} not yet: a missing path's error names the variable it came from
    written = with_vars(raw, f"suite {path}")
    raw = expand(written)
    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        raise ConfigError(f"suite {path}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(TOP_KEYS))}")
    gate = raw.get("gate", {})
    if not isinstance(gate, dict) or any(not isinstance(v, (int, float, str)) or isinstance(v, bool)
                                         for v in gate.values()):
        raise ConfigError(f"suite {path}: [gate] is a table such as max_latency_regression = \"10%\", "
                          f"max_accuracy_drop = 0.5; got {gate!r}")
    if isinstance(gate.get("max_accuracy_drop"), str):
        raise ConfigError(f"suite {path}: [gate] max_accuracy_drop is a number of points, got {gate['max_accuracy_drop']!r}")
    steps = parse_steps(raw.get("make", []), f"suite {path}")  # checked before anything runs
    cands = []
    for i, c in enumerate(raw.get("candidate", [])):
        c = dict(c)
        if "artifact" not in c:
            raise ConfigError(f"suite {path}: candidate {i + 1} has no artifact")
        c["artifact"] = rooted(c["artifact"])
        cands.append(build(Candidate, c, f"suite {path} candidate {i + 1}"))
    sweep = None
    if "sweep" in raw:
        s = {k: tuple(v) if isinstance(v, list) else v for k, v in raw["sweep"].items()}
        sweep = build(SweepConfig, s, f"suite {path} [sweep]")
    data = None
    if "data" in raw:  # [data] is one pass; [[data]] several (batch 1 and 32, a sample, a reference...)
        tables = raw["data"] if isinstance(raw["data"], list) else [raw["data"]]
        passes = []
        for i, d in enumerate(tables):
            d = dict(d)
            if d.get("source") and not NAMED_DATA.match(d["source"]):  # NAME:SPLIT stays a name
                d["source"] = str(rooted(d["source"]))
            passes.append(build(DataConfig, d, f"suite {path} [data]" if len(tables) == 1 else f"suite {path} data {i + 1}"))
        data = passes[0] if isinstance(raw["data"], dict) else tuple(passes)
    said = raw.get("report", {})
    if not isinstance(said, dict) or set(said) - REPORT_KEYS or not isinstance(said.get("notes", ""), str) or \
            not all(isinstance(b, str) for b in ([said["baseline"]] if isinstance(said.get("baseline", []), str)
                                                 else said.get("baseline", []))):
        raise ConfigError(f"suite {path}: [report] is a table of {', '.join(sorted(REPORT_KEYS))} (baseline: the "
                          f"candidate label, or labels, ratios are taken to; notes: text for the report); got {said!r}"[:300])
    if isinstance(said.get("baseline"), list):  # a label twice would print its ratio columns twice
        twice = next((b for i, b in enumerate(said["baseline"]) if b in said["baseline"][:i]), None)
        if twice is not None:
            raise ConfigError(f"suite {path}: [report] baseline names {twice!r} twice; give each label once")
    peers = []
    for i, p in enumerate(raw.get("peer", [])):
        p = dict(p)
        p.setdefault("python", os.environ.get("KILN_PEER_PYTHON") or DEFAULT_PEER_PYTHON)
        if isinstance(p["python"], str) and "/" in p["python"]:  # a path (relative: to the repository root)
            p["python"] = str(rooted(p["python"]))
        if isinstance(p.get("calib_data"), str) and not NAMED_DATA.match(p["calib_data"]):
            p["calib_data"] = str(rooted(p["calib_data"]))
        p["model"] = rooted(p.get("model", ""))
        if p.get("work_dir"):
            p["work_dir"] = rooted(p["work_dir"])
        try:
            peers.append(build(Peer, p, f"suite {path} peer {i + 1}"))
        except ConfigError as e:  # a peer's own check (kind, calibration, sweep) says which peer of which suite
            raise ConfigError(e if str(e).startswith(f"suite {path}") else f"suite {path} peer {i + 1}: {e}") from None
    prepare = raw.get("prepare", {})  # artifacts built on first use (benchmarks/harness/ci_model.py)
    if prepare:
        from benchmarks.harness.ci_model import PREPARE

        if not isinstance(prepare, dict) or any(k not in PREPARE or not isinstance(v, str) for k, v in prepare.items()):
            raise ConfigError(f"suite {path}: prepare is a table NAME = \"folder\" with NAME one of "
                              f"{', '.join(PREPARE)}; got {prepare!r}")
        for key, folder in prepare.items() if make else ():
            PREPARE[key](rooted(folder))
    made = run_steps(steps, ROOT, f"suite {path}", progress) if make else []
    kept = kept_candidates([c.artifact for c in cands], [c.label for c in cands], made, ROOT, f"suite {path}")
    if len(kept) < len(cands):  # the sweep, passes and baseline that name a candidate left out no longer do
        sweep, data = leave_out(made, [c.label for c in cands], kept, sweep, data, said, f"suite {path}")
        cands = [cands[i] for i in kept]
    for b in [said["baseline"]] if isinstance(said.get("baseline", []), str) else said.get("baseline", []):
        if b not in [c.label for c in cands]:
            raise ConfigError(f"suite {path}: [report] baseline {b!r} is no candidate's label; valid: "
                              f"{', '.join(c.label for c in cands)}")
    plan = BenchPlan(tuple(cands), sweep, data, tuple(peers), title=raw.get("title", path.stem),
                     extra={"suite": path.stem, **({"report": said} if said else {}), **({"make": made} if made else {})})
    paths = [(f"candidate {c.label}", "artifact", c.artifact, written["candidate"][i]["artifact"])
             for i, c in zip(kept, cands)]
    paths += [(f"peer {p.label}", "model", p.model, written["peer"][i].get("model", "")) for i, p in enumerate(peers)]
    settings = {"out": rooted(raw.get("out", f"benchmarks/work/bench/{path.stem}")), "gate": gate,
                "name": path.stem, "path": path, "paths": paths}
    return plan, settings


def check_paths(settings: dict[str, Any]) -> None:
    """Before measuring: every artifact and peer model the suite names exists; a missing one says how to
    point the suite elsewhere (the ${VAR} it reads, or the suite file). Not in load_suite: a suite parses on a
    machine without its artifacts."""
    for what, kind, where, written in settings["paths"]:
        if Path(where).exists():
            continue
        said = f"suite {settings['name']}, {what}: {kind} {where} does not exist"
        var = VAR.search(str(written))
        if var is None:
            raise ConfigError(f"{said}; edit {settings['path']} (or make the {kind} there)")
        name = var.group(1)
        if name in os.environ:
            raise ConfigError(f"{said} ({name}={os.environ[name]}); point {name} at the {kind}")
        raise ConfigError(f"{said}; set {name} to its path (the suite reads {written})")


__all__ = ["load_suite", "check_paths", "suite_path", "SUITES", "expand"]
