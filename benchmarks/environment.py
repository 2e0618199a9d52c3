"""The environment a number was measured in: CPU, cores, GPU, library versions."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from typing import Any

from runtime.artifact import library_versions


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags(wanted: tuple[str, ...] = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")) -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []
    return [w for w in wanted if w in flags]


def nvidia_smi(fields: str, units: bool = True) -> list[str]:
    """nvidia-smi's answer to `--query-gpu=FIELDS`, one line per GPU; [] without nvidia-smi (or if it fails)."""
    if not shutil.which("nvidia-smi"):
        return []
    fmt = "csv,noheader" if units else "csv,noheader,nounits"
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={fields}", f"--format={fmt}"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def gpus() -> list[str]:
    """One line per GPU: name, memory, driver version (nvidia-smi's own words)."""
    return nvidia_smi("name,memory.total,driver_version")


def gpu_memory_used_mb() -> list[int]:
    """Memory in use on each GPU now (every process's), in MiB; [] without nvidia-smi."""
    try:
        return [int(v) for v in nvidia_smi("memory.used", units=False)]
    except ValueError:
        return []


def rss_mb() -> tuple[float, float]:
    """This process's resident memory now and at its peak (VmRSS, VmHWM), in MB; (0, 0) off Linux."""
    now = peak = 0.0
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    now = int(line.split()[1]) / 1024
                elif line.startswith("VmHWM:"):
                    peak = int(line.split()[1]) / 1024
    except OSError:
        pass
    return round(now, 1), round(peak, 1)


def capture_environment() -> dict[str, Any]:
    versions = library_versions()
    return {
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_flags": cpu_flags(),
        "gpus": gpus(),
        "kiln": versions.get("modelkiln", "unknown"),
        "versions": versions,
    }
