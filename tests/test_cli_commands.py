"""Every `kiln` command through CliRunner: --help (with an example), one success and one bad input each; and
the option vocabulary that is the same across commands."""

import json

import click
import pytest

from exporter.cli import main
from tests.conftest import fill, sentiment_rows, write_csv
from tests.test_cli import one_line_error, run

COMMANDS = sorted(main.commands)
# closed sets: a typo is refused by Click with the valid values, never passed on as free text
CLOSED = {"--method", "--calibrator", "--scope", "--activation-type", "--weight-type", "--preset", "--precision",
          "--trt", "--kind", "--protocol", "--pattern", "--dtype", "--device"}


def test_every_command_is_listed_by_workflow():
    r = run("--help")
    assert r.exit_code == 0
    sections = [line for line in r.stdout.splitlines() if line.endswith(":") and not line.startswith(" ")]
    assert sections == ["Options:", "Make an artifact:", "Check it:", "Run it:", "Release it:"], sections
    listed = {line.split()[0] for line in r.stdout.splitlines() if line.startswith("  ") and not
              line.strip().startswith("-") and line.split()}
    assert set(COMMANDS) <= listed


@pytest.mark.parametrize("name", COMMANDS)
def test_help_has_an_example_and_every_option_says_what_it_does(name):
    r = run(name, "--help")
    assert r.exit_code == 0, r.output
    assert "Example:" in r.stdout and f"kiln {name}" in r.stdout.split("Example:")[1]
    assert "comma-separated for bench" not in r.stdout
    command = main.commands[name]
    for p in command.params:
        if isinstance(p, click.Option) and not p.hidden:
            assert p.help, f"kiln {name} {p.opts[0]} has no help text"
            if p.opts[-1] in CLOSED or p.opts[0] in CLOSED:
                assert isinstance(p.type, click.Choice), f"kiln {name} {p.opts[0]} is free text"
    for p in command.params:  # the vocabulary: one spelling per idea
        assert not ({"--eval", "--calib"} & set(p.opts) - {"--eval"}), p.opts
        if p.name == "out":
            assert p.opts == ["-o", "--output"], p.opts


def test_backend_choices_come_from_the_runtime():
    from runtime.session import BACKENDS

    for name in ("predict", "eval", "serve"):
        option = next(p for p in main.commands[name].params if p.name == "backend")
        assert list(option.type.choices) == ["auto", *BACKENDS]


def test_old_spellings_still_work_but_are_not_shown(tiny_bert, tmp_path):
    train = write_csv(tmp_path / "t.csv", sentiment_rows(16))
    help_text = run("finetune", "--help").stdout
    assert "--eval-data" in help_text and "--eval " not in help_text and "--eval," not in help_text
    r = run("finetune", tiny_bert, "--data", train, "--eval", train, "-o", tmp_path / "ft", "--max-steps", "1",
            "--batch-size", "8", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["lineage"][-1]["metrics"]["eval"]["n"] == 16


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_csv(tmp_path_factory.mktemp("cmd-data") / "d.csv", sentiment_rows(16))


def test_success_export_optimize_inspect_predict_eval_doctor(tiny_bert, tiny_onnx, data, tmp_path):
    assert run("export", tiny_bert, "--task", "text-classification", "-o", tmp_path / "e").exit_code == 0
    assert run("optimize", tiny_onnx.path, "-o", tmp_path / "o").exit_code == 0
    assert "step      to_onnx" in run("inspect", tiny_onnx.path).stdout
    assert run("predict", tiny_onnx.path, "good film").stdout.split()[0] in ("negative", "positive")
    r = run("eval", tiny_onnx.path, "--data", data, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["n"] == 16, r.output
    assert run("doctor").exit_code == 0


def test_success_serve_and_build_reach_their_api(tiny_onnx, tmp_path, monkeypatch):
    import exporter.tensorrt
    import runtime.server

    pytest.importorskip("uvicorn")
    seen = {}
    monkeypatch.setattr(runtime.server, "serve", lambda art, config: seen.setdefault("serve", config))
    from tests.test_server import free_port

    r = run("--quiet", "serve", tiny_onnx.path, "--port", free_port(), "--max-batch-size", "4")
    assert r.exit_code == 0 and seen["serve"].max_batch_size == 4, r.output
    monkeypatch.setattr(exporter.tensorrt, "to_tensorrt", lambda art, config, out, **kw: seen.setdefault("build", (art, config)))
    r = run("build", tiny_onnx.path, "-o", tmp_path / "engine", "--precision", "fp32", "--json")
    assert seen["build"][1].precision == "fp32", r.output


def test_success_export_triton(tiny_onnx, tmp_path):
    pytest.importorskip("tritonclient")
    r = run("export-triton", tiny_onnx.path, "--name", "tiny", "-o", tmp_path / "repo", "--json")
    assert r.exit_code == 0 and "tiny" in json.loads(r.stdout)["endpoints"], r.output


def test_success_release(tiny_onnx, tmp_path):
    pytest.importorskip("model_signing")
    import shutil

    art = tmp_path / "art"
    shutil.copytree(tiny_onnx.path, art)
    assert run("keygen", "-o", tmp_path / "keys").exit_code == 0
    assert run("sign", art, "--key", tmp_path / "keys" / "private.pem").exit_code == 0
    assert run("verify", art, "--pub", tmp_path / "keys" / "public.pem").exit_code == 0


@pytest.mark.parametrize("args, match", [
    (["export", "minilm", "-o", "{tmp}/x", "--task", "summarize"], "unknown task 'summarize'"),
    (["finetune", "{bert}", "--data", "{tmp}/none.csv", "-o", "{tmp}/x"], "does not exist"),
    (["prune", "{bert}", "-o", "{tmp}/x", "--scope", "row", "--sparsity", "0.5"], "'row' is not one of 'global', 'layer'"),
    (["quantize", "{onnx}", "-o", "{tmp}/x", "--calibrator", "mse"], "'mse' is not one of 'minmax'"),
    (["quantize", "{onnx}", "-o", "{tmp}/x", "--activation-type", "int4"], "'int4' is not one of 'int8', 'uint8'"),
    (["optimize", "{tmp}/none", "-o", "{tmp}/x"], "does not exist"),
    (["build", "{onnx}", "-o", "{tmp}/x", "--precision", "int4"], "'int4' is not one of 'fp32'"),
    (["export-triton", "{onnx}", "-o", "{tmp}/x", "--kind", "tpu"], "'tpu' is not one of 'cpu', 'gpu'"),
    (["inspect", "{tmp}/none"], "does not exist"),
    (["eval", "{onnx}"], "Missing option '--data'"),
    (["bench", "{onnx}", "--seq-len", "0"], "--seq-len must be comma-separated positive integers"),
    (["report", "{tmp}/none.json", "-o", "{tmp}/x"], "none.json does not exist"),
    (["doctor", "--fix"], "No such option '--fix'"),
    (["predict", "{onnx}", "x", "--device", "tpu"], "'tpu' is not one of 'cpu', 'cuda'"),
    (["serve", "{onnx}", "--port", "70000"], "70000 is not in the range 1<=x<=65535"),
    (["loadtest", "{onnx}", "--concurrency", "0"], "0 is not in the range x>=1"),
    (["keygen"], "Missing option '-o' / '--output'"),
    (["sign", "{onnx}", "--key", "{tmp}/none.pem"], "none.pem"),
    (["verify", "{onnx}", "--pub", "{tmp}/none.pem"], "has no signature (model.sig)"),
])
def test_bad_input_is_one_line_for_every_command(args, match, tiny_bert, tiny_onnx, tmp_path):
    subs = {"{tmp}": str(tmp_path), "{onnx}": str(tiny_onnx.path), "{bert}": str(tiny_bert)}
    one_line_error(run(*fill(args, subs)), match)
    assert not (tmp_path / "x").exists()


def test_every_command_has_a_bad_input_case():
    covered = {args[0] for args, _ in BAD_CASES()}
    assert covered == set(COMMANDS)


def BAD_CASES():  # noqa: N802 - the parametrize table above, read back
    mark = next(m for m in test_bad_input_is_one_line_for_every_command.pytestmark if m.name == "parametrize")
    return mark.args[1]
