"""A suite's [vars] and [[make]] steps (benchmarks/harness/make.py): artifacts made by real kiln commands before
measuring, reused while the same command made them, remade when it changes, failures in one line."""

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from exporter.cli import main
from runtime.errors import ConfigError

QUANTIZE = "kiln quantize ${TINY} --method dynamic-int8 -o {out}"
SWEEP = "[sweep]\nbatch_sizes = [1]\nseq_lens = [8]\nwarmup = 1\nrounds = 2\nper_round = 1\n"


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture()
def tiny(tiny_onnx, tmp_path):
    """A private copy of the tiny fp32 artifact (a test may change it)."""
    return shutil.copytree(tiny_onnx.path, tmp_path / "tiny")


def suite(tmp_path, tiny, steps, candidates=("int8",), extra=""):
    """A suite in tmp_path: TINY is a var, each step a [[make]] table, each candidate an artifact folder there."""
    text = f'[vars]\nTINY = "{tiny}"\nW = "{tmp_path}"\n' + extra
    for step in steps:
        text += "[[make]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in step.items())
    for name in candidates:
        text += f'[[candidate]]\nartifact = "${{W}}/{name}"\nlabel = "{name}"\n'
    path = tmp_path / "s.toml"
    path.write_text(text + SWEEP)
    return path


def load(path):
    from benchmarks.harness.suites import load_suite

    said = []
    plan, settings = load_suite(str(path), said.append)
    return plan, said


def test_a_step_is_made_then_reused_then_made_again_when_its_command_or_input_changes(tmp_path, tiny):
    step = {"out": f"{tmp_path}/int8", "run": QUANTIZE}
    path = suite(tmp_path, tiny, [step])
    plan, said = load(path)
    made = plan.extra["make"]
    assert [m["status"] for m in made] == ["made"] and made[0]["command"].startswith("kiln quantize ")
    assert made[0]["command"].endswith(f"-o {tmp_path}/int8") and said[0].startswith("make 1/1: kiln quantize")
    assert (tmp_path / "int8" / "manifest.json").is_file()
    assert not any(p.name.endswith(".make.json") for p in (tmp_path / "int8").iterdir())  # beside, not in it
    record = json.loads((tmp_path / ".int8.make.json").read_text())
    assert record["command"] == made[0]["command"] and record["exit"] == 0 and record["seconds"] > 0
    assert [c.label for c in plan.candidates] == ["int8"]
    first = (tmp_path / "int8" / "manifest.json").read_bytes()

    plan, said = load(path)  # the same command: nothing runs
    assert [m["status"] for m in plan.extra["make"]] == ["reused"]
    assert said == [f"make 1/1: {made[0]['command']} (skipped: made earlier by the same command)"]
    assert (tmp_path / "int8" / "manifest.json").read_bytes() == first

    suite(tmp_path, tiny, [{**step, "run": QUANTIZE + " --per-tensor"}])  # a changed command: made again (--force)
    plan, _ = load(path)
    assert [m["status"] for m in plan.extra["make"]] == ["made"]
    assert "--per-tensor" in json.loads((tmp_path / ".int8.make.json").read_text())["command"]
    assert plan.extra["make"][0]["command"].endswith("--per-tensor")  # --force is how it ran, not what it is

    manifest = tiny / "manifest.json"  # the input artifact remade: what was made from it is made again
    manifest.write_text(manifest.read_text() + "\n")
    plan, _ = load(path)
    assert [m["status"] for m in plan.extra["make"]] == ["made"]


def test_an_artifact_no_make_step_made_is_never_replaced(tmp_path, tiny):
    """out holds an artifact with no record beside it (made by hand, or a typo'd out): the step refuses to run
    rather than overwrite it with --force."""
    path = suite(tmp_path, tiny, [{"out": f"{tmp_path}/int8", "run": QUANTIZE}])
    shutil.copytree(tiny, tmp_path / "int8")
    before = (tmp_path / "int8" / "manifest.json").read_bytes()
    with pytest.raises(ConfigError, match="already holds files that no make step made .no .int8.make.json"):
        load(path)
    assert (tmp_path / "int8" / "manifest.json").read_bytes() == before


def test_an_edited_artifact_or_input_is_made_again(tmp_path, tiny):
    """The record holds fingerprints (files, sizes, times) of the output and of every path the command reads."""
    import os

    path = suite(tmp_path, tiny, [{"out": f"{tmp_path}/int8", "run": QUANTIZE}])
    assert [m["status"] for m in load(path)[0].extra["make"]] == ["made"]
    assert [m["status"] for m in load(path)[0].extra["make"]] == ["reused"]
    edited = tmp_path / "int8" / "tokenizer_config.json"
    os.utime(edited, ns=(edited.stat().st_atime_ns, edited.stat().st_mtime_ns + 10**9))  # the output edited
    assert [m["status"] for m in load(path)[0].extra["make"]] == ["made"]
    src = tiny / "tokenizer_config.json"
    os.utime(src, ns=(src.stat().st_atime_ns, src.stat().st_mtime_ns + 10**9))  # an input's file edited
    assert [m["status"] for m in load(path)[0].extra["make"]] == ["made"]


@pytest.mark.parametrize("run, message", [
    ("kiln quantize ${TINY} --method dynamic-int8 -o ${W}/elsewhere", "run must write its artifact to the step's out"),
    ("kiln quantize ${TINY} --method dynamic-int8", "end it with -o {out}"),
])
def test_a_step_must_write_its_own_out(tmp_path, tiny, run, message):
    path = suite(tmp_path, tiny, [{"out": f"{tmp_path}/int8", "run": run}])
    with pytest.raises(ConfigError, match=message.replace("{", r"\{").replace("}", r"\}")):
        load(path)
    assert not (tmp_path / "elsewhere").exists()


def test_nested_or_repeated_outs_are_refused_before_anything_runs(tmp_path, tiny):
    steps = [{"out": f"{tmp_path}/n/sub", "run": QUANTIZE}, {"out": f"{tmp_path}/n/", "run": QUANTIZE}]
    with pytest.raises(ConfigError, match="make steps 1 and 2 write .* one inside the other"):
        load(suite(tmp_path, tiny, steps, candidates=()))
    assert not (tmp_path / "n").exists()


def test_a_value_with_spaces_stays_one_word(tmp_path, tiny):
    """${W} holding a space: run is split into words before substitution, as a quoted shell variable would be."""
    spaced = tmp_path / "sp ace"
    spaced.mkdir()
    tiny2 = shutil.copytree(tiny, spaced / "tiny")
    path = suite(spaced, tiny2, [{"out": f"{spaced}/int8", "run": QUANTIZE}])
    assert [m["status"] for m in load(path)[0].extra["make"]] == ["made"]
    assert (spaced / "int8" / "manifest.json").exists()


def test_a_failing_step_is_one_line_naming_it_and_leaves_no_record(tmp_path, tiny):
    path = suite(tmp_path, tiny, [{"out": f"{tmp_path}/int8", "run": "kiln quantize ${W}/missing -o {out}"}])
    with pytest.raises(ConfigError, match=r"make step 1 failed \(kiln quantize .*/missing -o .*/int8\): "
                                          r"artifact '.*missing' does not exist$"):
        load(path)
    assert not (tmp_path / ".int8.make.json").exists()
    r = run("bench", "--suite", path)
    assert r.exit_code != 0 and r.output.strip().splitlines()[-1].startswith("error: suite ")
    assert "Traceback" not in r.output and "make step 1 failed" in r.output.strip().splitlines()[-1]


def test_a_step_that_may_fail_drops_its_candidates_and_keeps_the_reason(tmp_path, tiny):
    steps = [{"out": f"{tmp_path}/int8", "run": "kiln quantize ${W}/missing -o {out}", "may_fail": True},
             {"out": f"{tmp_path}/int8-again", "run": "kiln quantize ${W}/int8 -o {out}"}]  # reads the failed one
    path = suite(tmp_path, tiny, steps, candidates=("tiny", "int8", "int8-again"))
    plan, said = load(path)
    assert [c.label for c in plan.candidates] == ["tiny"]
    first, second = plan.extra["make"]
    assert first["status"] == "failed" and first["dropped"] == ["int8"]
    assert first["error"].startswith("artifact ") and first["error"].endswith("does not exist")
    assert second["status"] == "failed" and second["dropped"] == ["int8-again"] and "not run" in second["error"]
    assert any("failed (may_fail)" in line for line in said)

    from benchmarks.harness.render import made_markdown

    text = "\n".join(made_markdown(plan.extra))
    assert "## How the artifacts were made" in text and f"# FAILED: {first['error']}\nkiln quantize" in text
    assert f"- int8: {first['error']}" in text

    path = suite(tmp_path, tiny, steps[:1])  # nothing left to measure
    with pytest.raises(ConfigError, match="no candidate left to measure.*does not exist"):
        load(path)


def test_bench_reports_how_its_artifacts_were_made_and_kiln_report_renders_it(tmp_path, tiny):
    path = suite(tmp_path, tiny, [{"out": f"{tmp_path}/int8", "run": QUANTIZE}])
    r = run("bench", "--suite", path, "-o", tmp_path / "out", "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert [m["status"] for m in report["config"]["make"]] == ["made"]
    md = (tmp_path / "out" / "s.md").read_text()
    assert "## How the artifacts were made" in md and f"```\n# made in " in md and QUANTIZE.split()[1] in md
    r = run("report", tmp_path / "out" / "s.json", "-o", tmp_path / "again")
    assert r.exit_code == 0, r.output
    assert "## How the artifacts were made" in (tmp_path / "again" / "s.md").read_text()

    report["config"]["make"][0]["status"] = "baked"
    (tmp_path / "bad.json").write_text(json.dumps(report))
    r = run("report", tmp_path / "bad.json", "-o", tmp_path / "bad")
    assert r.exit_code != 0 and "config.make[0].status must be one of made, reused, failed" in r.output


@pytest.mark.parametrize("step, message", [
    ({"out": "x", "run": "python -c 'print(1)'"}, "make step 1: run must be a kiln command"),
    ({"out": "x", "run": ["rm", "-rf", "x"]}, "make step 1: run must be a kiln command"),
    ({"out": "x", "run": "kiln serve x"}, r"must be a kiln command that makes an artifact \(kiln export \| finetune"),
    ({"out": "x", "run": "kiln quantize a -o {out}", "mayfail": True},
     "make step 1: unknown key.s. mayfail; valid: out, run, may_fail"),
    ({"run": "kiln quantize a -o {out}"}, "make step 1: out is the folder"),
    ({"out": "x", "run": "kiln quantize a -o {out}", "may_fail": "yes"}, "may_fail is true or false"),
])
def test_a_wrong_make_step_is_refused_before_anything_runs(tmp_path, tiny, step, message):
    path = suite(tmp_path, tiny, [step])
    with pytest.raises(ConfigError, match=message):
        load(path)
    r = run("bench", "--suite", path)
    assert r.exit_code != 0 and len(r.output.strip().splitlines()) == 1 and r.output.startswith("error: ")


def test_vars_expand_everywhere_and_the_environment_only_where_asked(tmp_path, tiny, monkeypatch):
    monkeypatch.setenv("PLAIN", "from-env")
    monkeypatch.setenv("OVERRIDE", str(tmp_path / "env-art"))
    extra = ('PLAIN = "${W}/plain"\nOVERRIDE = "${OVERRIDE:-nowhere}"\nROUNDS = 3\n'
             '[data]\nsource = "${W}/d.csv"\nrounds = "${ROUNDS}"\n')
    path = suite(tmp_path, tiny, [], candidates=(), extra=extra)
    path.write_text(path.read_text() + '[[candidate]]\nartifact = "${PLAIN}"\n[[candidate]]\nartifact = "${OVERRIDE}"\n')
    plan, _ = load(path)
    assert [c.artifact for c in plan.candidates] == [tmp_path / "plain", tmp_path / "env-art"]
    assert plan.data.rounds == 3 and plan.data.source == str(tmp_path / "d.csv") and "make" not in plan.extra

    path.write_text(path.read_text() + '[[candidate]]\nartifact = "${NOT_A_VAR_OR_ENV}/x"\n')
    with pytest.raises(ConfigError, match="needs \\$NOT_A_VAR_OR_ENV, which is not set"):
        load(path)
    path.write_text('vars = {A = ["x"]}\n[[candidate]]\nartifact = "a"\n')
    with pytest.raises(ConfigError, match=r"\[vars\] A = \['x'\]: a var is NAME = \"value\""):
        load(path)
    path.write_text('vars = "x"\n[[candidate]]\nartifact = "a"\n')
    with pytest.raises(ConfigError, match=r"\[vars\] is a table"):
        load(path)


def test_a_missing_artifact_still_names_the_environment_variable_behind_a_var(tmp_path, tiny, monkeypatch):
    from benchmarks.harness.suites import check_paths, load_suite

    monkeypatch.delenv("KILN_TEST_ART", raising=False)
    path = tmp_path / "s.toml"
    path.write_text('[vars]\nART = "${KILN_TEST_ART:-' + str(tmp_path) + '/none}"\n'
                    '[[candidate]]\nartifact = "${ART}"\n' + SWEEP)
    _, settings = load_suite(str(path))
    with pytest.raises(ConfigError, match="set KILN_TEST_ART to its path"):
        check_paths(settings)


def test_a_step_command_reads_its_out_and_home_as_a_shell_would():
    import os

    from benchmarks.harness.make import parse_steps

    step, = parse_steps([{"out": "~/k/int8", "run": "kiln quantize ~/k/fp32 -o {out} --calib-data 'a b.csv'"}], "s")
    home = os.path.expanduser("~")
    assert step.argv == ("kiln", "quantize", f"{home}/k/fp32", "-o", f"{home}/k/int8", "--calib-data", "a b.csv")
    assert step.command == f"kiln quantize {home}/k/fp32 -o {home}/k/int8 --calib-data 'a b.csv'"


def test_a_step_reading_a_failed_steps_out_is_not_reused_from_its_older_artifact(tmp_path, tiny):
    """Step 1's command changed and now fails: step 2's record (made from step 1's older artifact) is no answer."""
    from benchmarks.harness.make import fingerprint, input_artifacts, parse_steps, write_record
    from benchmarks.harness.suites import ROOT

    steps = [{"out": f"{tmp_path}/int8", "run": "kiln quantize ${W}/missing -o {out}", "may_fail": True},
             {"out": f"{tmp_path}/again", "run": f"kiln quantize {tmp_path}/int8 -o {{out}}"}]
    path = suite(tmp_path, tiny, steps, candidates=("tiny", "again"))
    shutil.copytree(tiny, tmp_path / "int8")  # what step 1 made before its command changed
    write_record(tmp_path / "int8", {"command": "kiln quantize (an older command)", "exit": 0})
    shutil.copytree(tiny, tmp_path / "again")
    second = parse_steps(steps[1:], "s")[0]
    write_record(tmp_path / "again", {"command": second.command, "exit": 0, "seconds": 1.0, "finished": "then",
                                      "inputs": input_artifacts(second, ROOT),
                                      "output": fingerprint(tmp_path / "again")})
    plan, _ = load(path)
    assert [m["status"] for m in plan.extra["make"]] == ["failed", "failed"]
    assert [c.label for c in plan.candidates] == ["tiny"]

    steps[0] = {"out": f"{tmp_path}/unrelated", "run": "kiln quantize ${W}/missing -o {out}", "may_fail": True}
    path = suite(tmp_path, tiny, steps, candidates=("tiny", "again"))  # the record itself is honoured
    plan, _ = load(path)
    assert [m["status"] for m in plan.extra["make"]] == ["failed", "reused"]
    assert plan.extra["make"][1]["finished"] == "then" and [c.label for c in plan.candidates] == ["tiny", "again"]


def test_the_sweep_passes_and_baseline_naming_a_candidate_left_out_no_longer_name_it(tmp_path, tiny):
    fails = f'[[make]]\nout = "{tmp_path}/int8"\nrun = "kiln quantize ${{W}}/missing -o {{out}}"\nmay_fail = true\n'
    head = (f'[vars]\nW = "{tmp_path}"\n{fails}[[candidate]]\nartifact = "{tiny}"\nlabel = "tiny"\n'
            '[[candidate]]\nartifact = "${W}/int8"\nlabel = "int8"\n')
    body = ('[sweep]\nbatch_sizes = [1]\ncandidates = ["tiny", "int8"]\n'
            '[[data]]\nsource = "d.csv"\nname = "only int8"\ncandidates = ["int8"]\n'
            '[[data]]\nsource = "d.csv"\nname = "both"\ncandidates = ["tiny", "int8"]\n')
    path = tmp_path / "s.toml"
    path.write_text(head + body)
    plan, _ = load(path)
    assert plan.sweep.candidates == ("tiny",) and [(d.name, d.candidates) for d in plan.passes] == [("both", ("tiny",))]

    path.write_text(head + body.replace('name = "both"', 'name = "both"\nreference = "int8"'))
    with pytest.raises(ConfigError, match="data pass 'both''s reference 'int8' could not be made: artifact .* does not"):
        load(path)
    path.write_text(head + body + '[report]\nbaseline = ["tiny", "int8"]\n')
    with pytest.raises(ConfigError, match=r"\[report\] baseline 'int8' could not be made: artifact"):
        load(path)


def test_a_bad_output_folder_is_said_before_any_step_runs(tmp_path, tiny):
    """Making can take minutes: -o (and the rest of the command) is checked first, and nothing is made."""
    path = suite(tmp_path, tiny, [{"out": f"{tmp_path}/int8", "run": QUANTIZE}])
    (tmp_path / "afile").write_text("x")
    r = run("bench", "--suite", path, "-o", tmp_path / "afile")
    assert r.exit_code != 0 and "is a file; give a folder for the report" in r.output
    assert not (tmp_path / "int8").exists()


def test_a_long_failure_reason_is_cut_in_the_markdown_and_kept_in_the_json():
    from benchmarks.harness.make import made_markdown

    reason = "cannot parse: " + "; ".join(f"op {i}: no importer" for i in range(60))
    lines = made_markdown({"make": [{"out": "x", "command": "kiln build a -o x", "status": "failed", "seconds": 1.0,
                                     "error": reason, "dropped": ["engine"]}]})
    comment = next(line for line in lines if line.startswith("# FAILED: "))
    assert len(comment) < 300 and comment.endswith(f"({len(reason)} characters in the JSON)")
    assert max(len(line) for line in lines) < 700


def test_a_failing_steps_own_error_line_is_said_once_by_the_bench(tmp_path, capfd):
    """The step's progress passes through; its `error:` line is held back and said once, in the bench's error."""
    from benchmarks.harness.make import run_kiln
    from benchmarks.harness.suites import ROOT

    code, last = run_kiln(["kiln", "export", str(tmp_path / "nowhere"), "-o", str(tmp_path / "x")], ROOT, quiet=False)
    err = capfd.readouterr().err
    assert code != 0 and "does not exist" in last and "error: " not in err


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_step_dies_with_a_killed_bench(tmp_path, tiny):
    """kill -9 of the bench mid-step: the step's kiln goes too, so no orphan finishes an unrecorded artifact."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from benchmarks.harness.suites import ROOT

    script = ("import time, sys; from benchmarks.harness.make import run_kiln; "
              f"run_kiln(['kiln', 'quantize', {str(tiny)!r}, '--method', 'dynamic-int8', '-o', {str(tmp_path / 'o')!r}], "
              f"__import__('pathlib').Path({str(ROOT)!r}), quiet=True)")
    bench = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT)
    children = Path(f"/proc/{bench.pid}/task/{bench.pid}/children")
    deadline = time.time() + 20
    while time.time() < deadline and not children.read_text().split():
        time.sleep(0.05)
    child = int(children.read_text().split()[0])
    os.kill(bench.pid, signal.SIGKILL)
    bench.wait()
    for _ in range(100):  # the kernel's SIGKILL arrives at once; allow the zombie to be reaped by init
        if not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]:
            break
        time.sleep(0.05)
    else:
        os.kill(child, signal.SIGKILL)
        raise AssertionError("the step's kiln outlived the killed bench")
    assert not (tmp_path / "o" / "manifest.json").exists()
