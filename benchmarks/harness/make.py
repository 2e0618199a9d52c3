"""A suite's `[vars]` and `[[make]]` steps: the artifacts a suite measures, made by kiln commands before it measures.

    [vars]
    FP32 = "${KILN_FT_ONNX:-benchmarks/work/ft-onnx}"      # ${FP32} anywhere else in the suite
    [[make]]
    out = "benchmarks/work/suite/int8"
    run = "kiln quantize ${FP32} --method dynamic-int8 -o {out}"
    may_fail = false

A step runs `python -m exporter.cli ARGS` (its `run` less the leading `kiln`) from the repository root with
HF_HUB_OFFLINE=1, unless `out` holds an artifact that a record beside it (`.OUT.make.json`, never inside the
artifact: its manifest hashes its files) says the same command made, from the same input artifacts. The record is
written only after the step succeeded, so a step killed half way is made again. A failing step stops the suite in
one line, unless it may fail: then every candidate measuring its `out` (or a folder in it) is left out, and the
report says why."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from runtime.errors import ConfigError

STEP_KEYS = ("out", "run", "may_fail")
STATUSES = ("made", "reused", "failed")


def with_vars(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """The suite less its [vars] table, each ${NAME} of a var replaced by the var's value as written (a value may
    use ${ENV}, ${ENV:-default} and earlier vars); ${ENV} is left for suites.expand, so a missing path's error
    still names the environment variable it came from."""
    from benchmarks.harness.suites import VAR, substitute  # suites imports this module: one spelling of ${...}

    table = raw.get("vars", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: [vars] is a table of NAME = \"value\" lines; got {table!r}")
    values: dict[str, str] = {}

    def sub(value: Any) -> Any:  # a var's ${NAME} replaced; any other ${...} left for suites.expand
        return substitute(value, lambda m: values.get(m.group(1), m.group(0)))

    for name, value in table.items():
        if not isinstance(value, (str, int, float)) or isinstance(value, bool) or not VAR.fullmatch(f"${{{name}}}"):
            raise ConfigError(f"{where}: [vars] {name} = {value!r}: a var is NAME = \"value\" (letters, digits, _; "
                              "a string or a number, which may use ${ENV} or ${ENV:-default})")
        values[name] = VAR.sub(lambda m: values.get(m.group(1), m.group(0)), str(value))  # earlier vars
    return sub({k: v for k, v in raw.items() if k != "vars"})


@dataclass(frozen=True)
class MakeStep:
    """One [[make]] table: `argv` is its command ({out} replaced), starting with "kiln"."""

    number: int
    out: str
    argv: tuple[str, ...]
    may_fail: bool = False

    @property
    def command(self) -> str:
        return shlex.join(self.argv)


def parse_steps(tables: Any, where: str) -> list[MakeStep]:
    """The suite's [[make]] tables, checked before anything runs (a typo costs no minutes)."""
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"{where}: make is a list of [[make]] tables ({', '.join(STEP_KEYS)}); got {tables!r}")
    from exporter.cli.group import SECTIONS  # the CLI's own list: a new stage command is allowed by itself

    making = SECTIONS["Make an artifact"]  # not kiln serve (it never ends) nor kiln bench (it makes no artifact)
    steps, outs = [], {}
    for i, t in enumerate(tables, 1):
        here = f"{where}: make step {i}"
        unknown = sorted(set(t) - set(STEP_KEYS))
        if unknown:
            raise ConfigError(f"{here}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(STEP_KEYS)}")
        out, run, may_fail = t.get("out"), t.get("run"), t.get("may_fail", False)
        if not isinstance(out, str) or not out.strip():
            raise ConfigError(f"{here}: out is the folder the step's command writes (a string), got {out!r}")
        if not isinstance(may_fail, bool):
            raise ConfigError(f"{here}: may_fail is true or false, got {may_fail!r}")
        if isinstance(run, str):
            try:
                words = shlex.split(run)
            except ValueError as e:
                raise ConfigError(f"{here}: run {run!r} does not split into words ({e})") from None
        elif isinstance(run, list) and all(isinstance(w, str) for w in run):
            words = list(run)
        else:
            raise ConfigError(f"{here}: run is a kiln command, a string or a list of strings, got {run!r}")
        if not words or words[0] != "kiln" or len(words) < 2 or words[1] not in making:
            raise ConfigError(f"{here}: run must be a kiln command that makes an artifact (kiln {' | '.join(making)} "
                              f"... -o {{out}}), got {run!r}")
        if not any(w in ("-o", "--output") and nxt == "{out}" for w, nxt in zip(words, words[1:])):
            raise ConfigError(f"{here}: run must write its artifact to the step's out: end it with -o {{out}} "
                              f"(got {run!r}); otherwise the report would name an artifact the command did not make")
        if out in outs:
            raise ConfigError(f"{here}: out {out!r} is also step {outs[out]}'s; each step writes its own folder")
        outs[out] = i
        # a word led by ~ is the home folder, as a shell would read it (the command runs without a shell)
        argv = tuple(os.path.expanduser(w.replace("{out}", out)) for w in words)
        steps.append(MakeStep(i, out, argv, may_fail))
    return steps


def rooted(path: str, root: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else root / p


def inside(path: Path, folder: Path) -> bool:
    """`path` is `folder` or in it (ci-model/tiny-int8 is in ci-model)."""
    path, folder = Path(os.path.normpath(path)), Path(os.path.normpath(folder))
    return path == folder or folder in path.parents


def record_path(out: Path) -> Path:
    """Beside the artifact, not in it: the artifact's manifest hashes every file in its folder."""
    return out.parent / f".{out.name}.make.json"


def has_artifact(folder: Path) -> bool:
    """`folder` holds an artifact (its manifest); what the artifact holds is the fingerprint's business."""
    return (folder / "manifest.json").is_file()


def fingerprint(path: Path) -> str | None:
    """What a file or folder holds, cheaply: sha256 over each file's relative path, size and modification time
    (None: nothing there). An edited artifact, checkpoint or calibration file changes it; reading does not."""
    if not path.exists():
        return None
    files = [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.is_file())
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(path) if f != path else f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def input_artifacts(step: MakeStep, root: Path) -> dict[str, str]:
    """Everything the command reads that is a file or folder here (artifacts, checkpoints, calibration files), by
    its fingerprint: a remade or edited input remakes what was made from it."""
    out = rooted(step.out, root)
    found = {}
    for word in step.argv[2:]:
        if word.startswith("-") or not word.strip():
            continue
        path = rooted(word, root)
        if path != out and not inside(path, out) and (print_ := fingerprint(path)):
            found[word] = print_
    return found


def read_record(out: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(record_path(out).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # none, or unreadable: make the artifact again
    return record if isinstance(record, dict) else None


def write_record(out: Path, record: dict[str, Any]) -> None:
    """Whole or not at all (a reader never sees half a record)."""
    path = record_path(out)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=2), encoding="utf-8")
    os.replace(tmp, path)


def die_with_parent() -> None:
    """In the step's process, before kiln starts (Linux): the kernel kills it when the bench dies, even by kill -9.
    An orphaned step would finish an artifact no record vouches for, which the next run then refuses to replace."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def run_kiln(argv: Sequence[str], root: Path, quiet: bool) -> tuple[int, str]:
    """Run `kiln ARGS` as a subprocess; return its exit code and the last non-empty line it wrote (stderr first).
    Its progress on stderr passes through unless quiet; stdout (its summary) is kept out of the bench's."""
    cmd = [sys.executable, "-m", "exporter.cli", *(["-q"] if quiet else []), *argv[1:]]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # a suite never downloads
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, errors="replace", preexec_fn=die_with_parent)
    stdout: list[str] = []
    reader = threading.Thread(target=lambda: stdout.append(proc.stdout.read()), daemon=True)  # no pipe fills up
    reader.start()
    last = ""
    try:
        for line in proc.stderr:
            # its progress passes through; its one-line error does not: the bench says it once, naming the step
            if not quiet and not line.startswith("error: "):
                sys.stderr.write(line)
                sys.stderr.flush()
            if line.strip():
                last = line.strip()
        code = proc.wait()
    except BaseException:  # Ctrl-C: the step dies with the bench, leaving no record
        proc.kill()
        proc.wait()
        raise
    reader.join()
    if not last:
        last = next((ln.strip() for ln in reversed("".join(stdout).splitlines()) if ln.strip()), "")
    return code, last


def run_steps(steps: Sequence[MakeStep], root: Path, where: str,
              progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Make each step's artifact in order unless a record says the same command made it; return one record per
    step for the report ({out, command, status, seconds, error?}). A failure that may not fail is one
    ConfigError; one that may is kept, and the steps reading its artifact fail with it."""
    say = progress or (lambda message: None)
    quiet = progress is None or bool(getattr(progress, "quiet", False))
    folders = [(step, rooted(step.out, root).resolve()) for step in steps]
    for a, fa in folders:  # one step's out inside (or the same as) another's: one would delete or pollute the other
        for b, fb in folders:
            if a.number < b.number and (fa == fb or inside(fa, fb) or inside(fb, fa)):
                raise ConfigError(f"{where}: make steps {a.number} and {b.number} write {a.out} and {b.out}, one "
                                  "inside the other (or the same folder); give each step its own folder")
    done: list[dict[str, Any]] = []
    failed: dict[Path, str] = {}  # out -> why it could not be made
    for step in steps:
        out = rooted(step.out, root)
        head = f"make {step.number}/{len(steps)}: {step.command}"
        inputs = input_artifacts(step, root)
        # first: what an earlier run made from that step's older artifact is no answer to this suite either
        missing = next((why for folder, why in failed.items() for w in step.argv[2:]
                        if not w.startswith("-") and inside(rooted(w, root), folder)), None)
        if missing is not None:
            error = f"not run: it reads an artifact an earlier step could not make ({missing})"
            say(f"{head} (not run: an earlier step failed)")
            done.append({"out": step.out, "command": step.command, "status": "failed", "seconds": 0.0,
                         "error": error})
            failed[out] = error
            continue
        record = read_record(out)
        if (record and has_artifact(out) and record.get("command") == step.command and record.get("exit") == 0
                and record.get("output") == fingerprint(out) and record.get("inputs") == inputs):
            say(f"{head} (skipped: made earlier by the same command)")
            seconds, finished = record.get("seconds"), record.get("finished")
            done.append({"out": step.out, "command": step.command, "status": "reused",
                         "seconds": seconds if type(seconds) in (int, float) and seconds >= 0 else 0.0,
                         "finished": finished if isinstance(finished, str) else ""})
            continue
        argv = list(step.argv)
        holds = out.is_file() or (out.is_dir() and any(out.iterdir()))
        if holds and record is None:
            # no record: no make step wrote what is there (an artifact made by hand, a typo'd out): never replace it
            raise ConfigError(f"{where}: make step {step.number}: {step.out} already holds files that no make step "
                              f"made (no {record_path(out).name} beside it); move them away, or give the step "
                              "another out")
        if has_artifact(out) and "--force" not in argv:
            argv.append("--force")  # an earlier make step made what is there, by another command or from other inputs
        say(head)
        start = time.perf_counter()
        code, last = run_kiln(argv, root, quiet)
        seconds = round(time.perf_counter() - start, 3)
        error = None
        if code != 0:
            error = last or f"exit status {code}"
        elif not has_artifact(out):
            error = f"it finished but {step.out} holds no artifact (manifest.json): write it with -o {{out}}"
        if error is None:
            try:
                write_record(out, {"command": step.command, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                   "seconds": seconds, "exit": 0, "inputs": inputs, "output": fingerprint(out)})
            except OSError as e:  # the artifact is made; only the next run's shortcut is lost
                say(f"make {step.number}/{len(steps)}: could not write {record_path(out)} ({e.strerror}); "
                    "the next run makes it again")
            done.append({"out": step.out, "command": step.command, "status": "made", "seconds": seconds})
            continue
        error = " ".join(error.removeprefix("error: ").split())
        if not step.may_fail:
            raise ConfigError(f"{where}: make step {step.number} failed ({step.command}): {error}")
        say(f"make {step.number}/{len(steps)} failed (may_fail): {error}")
        done.append({"out": step.out, "command": step.command, "status": "failed", "seconds": seconds,
                     "error": error})
        failed[out] = error
    return done


def kept_candidates(artifacts: Sequence[Path], labels: Sequence[str], made: list[dict[str, Any]], root: Path,
                    where: str) -> list[int]:
    """Indices of the candidates to measure: those whose artifact is (in) a failed step's out are left out, and
    that step's record names them ("dropped"). All of them left out is an error."""
    kept = []
    for i, artifact in enumerate(artifacts):
        path = rooted(str(artifact), root)
        hit = next((r for r in made if r["status"] == "failed" and inside(path, rooted(r["out"], root))), None)
        if hit is None:
            kept.append(i)
        else:
            hit.setdefault("dropped", []).append(labels[i])
    if artifacts and not kept:
        why = "; ".join(f"{r['out']}: {r['error']}" for r in made if r.get("dropped"))
        raise ConfigError(f"{where}: no candidate left to measure: every candidate's artifact failed to be made ({why})")
    return kept


def leave_out(made: list[dict[str, Any]], labels: Sequence[str], kept: Sequence[int], sweep: Any, data: Any,
              report: dict[str, Any], where: str) -> tuple[Any, Any]:
    """The sweep and data passes without the candidates left out (a list naming only those drops its sweep or
    pass: an empty list would mean every candidate). A left-out reference or [report] baseline is an error:
    the rows would silently lose what they are compared with."""
    import dataclasses

    gone = {labels[i] for i in range(len(labels)) if i not in kept}
    left = {labels[i] for i in kept}
    why = {label: r["error"] for r in made for label in r.get("dropped", [])}

    def narrowed(config: Any, what: str) -> Any:
        if getattr(config, "reference", "") in gone:
            raise ConfigError(f"{where}: {what}'s reference {config.reference!r} could not be made: "
                              f"{why[config.reference]}")
        if not config.candidates or not gone & set(config.candidates):
            return config
        if not left & set(config.candidates):
            return None  # it measured only candidates left out
        return dataclasses.replace(config, candidates=tuple(c for c in config.candidates if c not in gone))

    baselines = report.get("baseline") or []
    for b in [baselines] if isinstance(baselines, str) else baselines:
        if b in gone:
            raise ConfigError(f"{where}: [report] baseline {b!r} could not be made: {why[b]}")
    if sweep is not None:
        sweep = narrowed(sweep, "[sweep]")
    if isinstance(data, (list, tuple)):
        data = tuple(p for p in (narrowed(d, f"data pass {d.name!r}") for d in data) if p is not None) or None
    elif data is not None:
        data = narrowed(data, "[data]")
    return sweep, data


def short(text: str, limit: int = 240) -> str:
    """A failure's reason cut for a report line (a parser can list dozens of errors; the JSON keeps them all)."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 1].rstrip() + f"... ({len(text)} characters in the JSON)"


def made_markdown(config: dict[str, Any]) -> list[str]:
    """The report's "How the artifacts were made": each command with its status (a failure with its reason), as
    lines for render.markdown(); nothing when the suite had no [[make]] steps."""
    steps = config.get("make") or []
    if not steps:
        return []
    def status(step: dict[str, Any]) -> str:
        if step["status"] == "made":
            return f"made in {step['seconds']:.1f} s"
        if step["status"] == "reused":
            when = f" on {step['finished']}" if step.get("finished") else ""
            return f"reused: made{when} by the same command in {step['seconds']:.1f} s"
        return f"FAILED: {short(step.get('error', ''))}"

    lines = ["## How the artifacts were made", "",
             "Before measuring, these kiln commands (run from the repository root) made the artifacts measured; "
             "a reused artifact was made by the same command from the same inputs in an earlier run.", "", "```"]
    for step in steps:
        lines += [f"# {status(step)}", step["command"]]
    lines += ["```", ""]
    failures = [s for s in steps if s["status"] == "failed"]
    if failures:
        lines += ["Not measured, because their artifact could not be made:", ""]
        for s in failures:
            who = ", ".join(s.get("dropped") or []) or s["out"]
            lines.append(f"- {who}: {short(s.get('error', 'failed'), 600)}")
        lines.append("")
    return lines
