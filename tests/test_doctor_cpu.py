"""kiln doctor: CPU features per backend, a recommendation, the int8 peak, and --measure."""

import json

import pytest

from runtime.cpu import backend_features, cpu_info
from tests.test_cli import one_line_error, run

ZEN4 = ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel name\t: AMD EPYC 9R14\ncpu MHz\t\t: 2600.000\n"
        "flags\t\t: fpu avx2 avx512f avx512_vnni avx512_bf16\n\nprocessor\t: 1\n")
SPR = ("vendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel name\t: Intel Xeon Platinum 8480\ncpu MHz\t\t: 2000.000\n"
       "flags\t\t: avx2 avx512f avx512_vnni avx512_bf16 amx_tile amx_bf16 amx_int8\n")
OLD = "vendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel name\t: Old Xeon\nflags\t\t: avx2\n"


def test_features_peak_and_what_each_backend_uses():
    zen4 = cpu_info(ZEN4, max_khz="")
    assert zen4.int8_isa == "avx512_vnni" and zen4.bf16 and zen4.mhz == 2600.0 and "cpuinfo" in zen4.mhz_source
    assert zen4.int8_macs_per_cycle()[0] == 64  # 512-bit VNNI on Zen 4's 256-bit units
    # peak = MACs/cycle x cores x clock x 2 operations per MAC
    assert zen4.int8_peak_tops(ghz=2.6) == pytest.approx(64 * zen4.cores * 2.6 * 2 / 1000)
    assert cpu_info(ZEN4, max_khz="3700000\n").mhz == 3700.0
    assert backend_features(zen4)["openvino"] == "int8: AVX-512 VNNI; bf16: AVX-512 BF16"
    spr = cpu_info(SPR, max_khz="")
    assert spr.int8_isa == "amx_int8" and spr.int8_macs_per_cycle()[0] == 1024
    assert backend_features(spr)["openvino"] == "int8: AMX-INT8; bf16: AMX-BF16"
    old = cpu_info(OLD, max_khz="")
    assert old.int8_isa == "none" and not old.bf16 and old.mhz == 0.0
    assert "no VNNI" in backend_features(old)["onnxruntime"]


def test_recommendation_follows_features_and_installs():
    from exporter.doctor import recommend

    assert "nncf-int8 --target openvino" in recommend(cpu_info(ZEN4, ""), True, True)
    assert recommend(cpu_info(ZEN4, ""), False, True).startswith("onnxruntime + dynamic-int8")
    assert "no VNNI" in recommend(cpu_info(OLD, ""), False, True)


def test_doctor_reports_cpu_rows():
    res = run("doctor", "--json")
    assert res.exit_code == 0, res.output
    names = [c["name"] for c in json.loads(res.stdout)]
    assert {"cpu", "cpu int8", "uses: onnxruntime", "uses: openvino", "openvino", "recommend"} <= set(names)


def test_measure_picks_the_fastest_per_shape(tiny_onnx):
    pytest.importorskip("openvino")
    from exporter.doctor import openvino_capabilities
    from exporter.doctor_measure import SHAPES, measure

    report = measure([tiny_onnx.path], openvino_capabilities(), iters=2)
    paths = {r["path"] for r in report["results"]}
    assert any("onnxruntime" in p for p in paths) and any("openvino" in p for p in paths)
    assert set(report["fastest"]) == {f"{b} x {t} tokens" for b, t in SHAPES} and all(v in paths for v in report["fastest"].values())


def test_measure_refuses_what_it_cannot_time(tiny_bert):
    one_line_error(run("doctor", "--measure", tiny_bert), "is not a Kiln artifact")


def test_measure_takes_cpu_formats_only(tiny_onnx):
    import dataclasses

    from exporter.doctor_measure import candidates
    from runtime import ConfigError

    with pytest.raises(ConfigError, match="--measure compares CPU backends on an 'onnx' or 'openvino' artifact, got 'hf'"):
        candidates(dataclasses.replace(tiny_onnx, format="hf"), None)
    assert [c.backend for c in candidates(tiny_onnx, None)] == ["onnxruntime"]  # no openvino: onnxruntime only
    assert [c.label.split(": ")[1] for c in candidates(tiny_onnx, ["FP32", "BF16"])] == [
        "onnxruntime fp32", "openvino fp32", "openvino fp32 (inference precision bfloat16)"]


def test_measure_keeps_two_artifacts_whose_folders_share_a_name(tiny_onnx, tmp_path):
    """m1/onnx and m2/onnx were merged into one set of rows (labelled by the folder name alone)."""
    import shutil

    from exporter.doctor_measure import measure

    for d in ("m1", "m2"):
        shutil.copytree(tiny_onnx.path, tmp_path / d / "onnx")
    report = measure([tmp_path / "m1" / "onnx", tmp_path / "m2" / "onnx"], None, iters=2)
    assert {str(tmp_path / d / "onnx") for d in ("m1", "m2")} <= {r["path"].split(": ")[0] for r in report["results"]}
