"""What is measured: a Kiln artifact on one backend, or a peer (another library, in its own environment)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from runtime.errors import ConfigError, KilnError

PEER_KINDS = ("transformers-eager", "optimum-fp32", "optimum-int8", "optimum-intel-fp32", "optimum-intel-int8")
# the kinds that calibrate on texts, and the texts the former openvino_table.py recipe gave optimum-intel's
# OVQuantizer (a seeded sample of 300 dev sentences), so the openvino suite's peer model is the same one
CALIBRATED_KINDS = ("optimum-intel-int8",)
# the kinds whose model is a file Kiln's sweep can open (transformers-eager runs PyTorch eager: there is no file)
SWEEP_KINDS = ("optimum-fp32", "optimum-int8", "optimum-intel-fp32", "optimum-intel-int8")
DEFAULT_CALIB_DATA = "movie-snippets:dev"
DEFAULT_CALIB_SAMPLES = 300


@contextlib.contextmanager
def naming(label: str) -> Iterator[None]:
    """A Kiln error raised while a candidate opens says which candidate (its options come from a suite or
    --backend-option; "batch_size must be >= 1" alone does not say where). Type and attributes are kept."""
    try:
        yield
    except KilnError as e:
        prefix = f"candidate {label}: "
        if not str(e).startswith(prefix):
            e.args = (prefix + str(e), *e.args[1:])
        raise


@dataclass(frozen=True)
class Candidate:
    """A Kiln artifact opened with one backend. `label` names its rows (default: folder name + backend)."""

    artifact: Path
    backend: str = "auto"
    device: str = "cpu"
    options: dict[str, Any] = field(default_factory=dict)  # session options: threads, dtype, cuda_graphs
    label: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "artifact", Path(self.artifact))
        if not self.label:
            suffix = "" if self.backend == "auto" else f"/{self.backend}"
            object.__setattr__(self, "label", f"{self.artifact.name}{suffix}")


@dataclass(frozen=True)
class Peer:
    """A peer pipeline run by benchmarks/peer/peer_server.py in its own Python (`python`)."""

    kind: str
    model: Path  # the Hugging Face checkpoint the peer loads (the one Kiln's artifacts came from)
    python: str
    batch_size: int = 32
    label: str = ""
    work_dir: Path | None = None  # where optimum writes its exported / quantized models
    calib_data: str = ""  # a calibrated kind's texts: a file or NAME:SPLIT, read on Kiln's side and sent over
    calib_samples: int | None = None  # how many of them (a seeded sample: seed 0)
    # sweep: also time the peer's model alone in the latency sweep (label "LABEL (model)"), opened by Kiln with
    # the same feeds and loop as its own candidates; like: the candidate label whose artifact lends the wrapped
    # model its tokenizer, input/output specs and labels (default: the plan's first candidate)
    sweep: bool = False
    like: str = ""

    def __post_init__(self) -> None:
        if self.kind not in PEER_KINDS:
            raise ConfigError(f"peer kind must be one of {', '.join(PEER_KINDS)}, got {self.kind!r}")
        if self.batch_size < 1:
            raise ConfigError(f"peer batch_size must be >= 1, got {self.batch_size}")
        if self.kind not in CALIBRATED_KINDS:  # the report's config must not suggest a calibration that never ran
            if self.calib_data or self.calib_samples is not None:
                raise ConfigError(f"peer kind {self.kind} does not calibrate, but calib_data/calib_samples "
                                  f"({self.calib_data!r}, {self.calib_samples!r}) were given; calibrated kinds: "
                                  f"{', '.join(CALIBRATED_KINDS)}")
        else:
            samples = DEFAULT_CALIB_SAMPLES if self.calib_samples is None else self.calib_samples
            if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
                raise ConfigError(f"peer calib_samples must be an integer >= 1, got {samples!r}")
            object.__setattr__(self, "calib_samples", samples)
            object.__setattr__(self, "calib_data", str(self.calib_data or DEFAULT_CALIB_DATA))
        if not isinstance(self.sweep, bool):
            raise ConfigError(f"peer sweep is true or false, got {self.sweep!r}")
        if self.sweep and self.kind not in SWEEP_KINDS:
            raise ConfigError(f"peer kind {self.kind} has no model file to time in the sweep (it runs PyTorch eager); "
                              f"sweep = true needs one of {', '.join(SWEEP_KINDS)}")
        if self.like and not self.sweep:  # the report's config must not suggest a wrapped model that never ran
            raise ConfigError(f"peer like = {self.like!r} names the artifact lending the peer's model its specs in "
                              "the sweep, but sweep is not true; set sweep = true or drop like")
        object.__setattr__(self, "model", Path(self.model))
        if not self.label:
            object.__setattr__(self, "label", f"peer:{self.kind}")
