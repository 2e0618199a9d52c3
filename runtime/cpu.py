"""What this x86 CPU offers the backends (VNNI, AVX-512 BF16, AMX), and its int8 peak.

Read from /proc/cpuinfo (Linux); elsewhere every feature reads as absent. Imports nothing heavy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# flag -> what it gives an inference backend
FEATURES = {
    "avx2": "AVX2",
    "avx512f": "AVX-512",
    "avx_vnni": "AVX-VNNI (256-bit int8 dot products)",
    "avx512_vnni": "AVX-512 VNNI (512-bit int8 dot products)",
    "avx512_bf16": "AVX-512 BF16 (bfloat16 dot products)",
    "amx_int8": "AMX-INT8 (int8 tile matrix multiply)",
    "amx_bf16": "AMX-BF16 (bfloat16 tile matrix multiply)",
    "avx512_fp16": "AVX-512 FP16",
}


@dataclass(frozen=True)
class CpuInfo:
    model: str
    vendor: str
    family: int
    cores: int  # logical CPUs this process sees
    flags: frozenset[str]
    mhz: float  # the clock used for the peak: cpufreq's maximum where the kernel exposes it, else cpuinfo's
    mhz_source: str

    def has(self, flag: str) -> bool:
        return flag in self.flags

    @property
    def int8_isa(self) -> str:
        """The widest int8 dot-product instructions: amx, avx512_vnni, avx_vnni, or none."""
        for isa in ("amx_int8", "avx512_vnni", "avx_vnni"):
            if self.has(isa):
                return isa
        return "none"

    @property
    def bf16(self) -> bool:
        return self.has("avx512_bf16") or self.has("amx_bf16")

    def int8_macs_per_cycle(self) -> tuple[int, str]:
        """int8 multiply-accumulates per cycle per core at the ISA's limit, and why that number.

        AMX-INT8: 1,024 (Intel's figure for Sapphire Rapids' TMUL: 2,048 int8 operations per cycle per core).
        AVX-512 VNNI: one VPDPBUSD zmm is 64 MACs; Intel server cores issue two per cycle (128), AMD Zen 4
        runs 512-bit ops on 256-bit units (64), Zen 5 has full 512-bit units (128).
        AVX-VNNI (256-bit): 2 x 32 = 64. Without VNNI, int8 goes through VPMADDUBSW/VPMADDWD pairs: ~32.
        """
        isa = self.int8_isa
        if isa == "amx_int8":
            return 1024, "AMX-INT8 TMUL: 1024 int8 MACs/cycle"
        if isa == "avx512_vnni":
            if self.vendor == "AuthenticAMD" and self.family == 25:
                return 64, "AVX-512 VNNI on AMD Zen 4 (512-bit ops on 256-bit units): 64 int8 MACs/cycle"
            return 128, "AVX-512 VNNI, two 512-bit VPDPBUSD per cycle: 128 int8 MACs/cycle"
        if isa == "avx_vnni":
            return 64, "AVX-VNNI, two 256-bit VPDPBUSD per cycle: 64 int8 MACs/cycle"
        return 32, "no VNNI (VPMADDUBSW + VPMADDWD): about 32 int8 MACs/cycle"

    def int8_peak_tops(self, macs_per_cycle: int | None = None, ghz: float | None = None) -> float:
        """int8 peak in tera-operations/s (a MAC is 2 operations): MACs/cycle x cores x clock x 2."""
        macs = macs_per_cycle or self.int8_macs_per_cycle()[0]
        return macs * self.cores * (ghz or self.mhz / 1000) * 2 / 1000


def _cpuinfo_fields(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break  # the first processor's block is enough
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_info(cpuinfo: str | None = None, max_khz: str | None = None) -> CpuInfo:
    """This machine's CPU (or one described by the given /proc/cpuinfo and cpufreq texts, for tests)."""
    import os

    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    if max_khz is None:
        try:
            max_khz = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()
        except OSError:
            max_khz = ""
    f = _cpuinfo_fields(cpuinfo)
    try:
        mhz, source = float(max_khz) / 1000, "cpufreq maximum"
    except ValueError:
        try:
            mhz, source = float(f.get("cpu MHz", "")), "/proc/cpuinfo cpu MHz (no cpufreq: a VM reports its nominal clock)"
        except ValueError:
            mhz, source = 0.0, "unknown"
    try:
        family = int(f.get("cpu family", "0"))
    except ValueError:
        family = 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return CpuInfo(model=f.get("model name", "unknown"), vendor=f.get("vendor_id", ""), family=family, cores=cores,
                   flags=frozenset(f.get("flags", "").split()), mhz=mhz, mhz_source=source)


def feature_names(info: CpuInfo) -> list[str]:
    return [FEATURES[k] for k in FEATURES if info.has(k)]


def backend_features(info: CpuInfo) -> dict[str, str]:
    """Which of this CPU's features each backend's fast paths use (as their kernels are documented to)."""
    int8 = {"amx_int8": "AMX-INT8", "avx512_vnni": "AVX-512 VNNI", "avx_vnni": "AVX-VNNI"}.get(info.int8_isa, "")
    bf16 = "AMX-BF16" if info.has("amx_bf16") else "AVX-512 BF16" if info.has("avx512_bf16") else ""
    # onnxruntime's MLAS: int8 GEMM with VNNI (AMX on recent releases); fp32 on AVX-512/AVX2; no bf16 on CPU
    ort = [f"int8 GEMM: {int8 or 'no VNNI (slow int8 path)'}", "fp32: " + ("AVX-512" if info.has("avx512f") else "AVX2")]
    # OpenVINO's CPU plugin (oneDNN): int8 with VNNI/AMX, bf16 inference precision with AVX-512 BF16/AMX
    ov = [f"int8: {int8 or 'no VNNI'}", f"bf16: {bf16 or 'not available (float32 only)'}"]
    torch = [f"bfloat16: {bf16 or 'emulated (slow)'}"]
    return {"onnxruntime": "; ".join(ort), "openvino": "; ".join(ov), "torch": "; ".join(torch)}
