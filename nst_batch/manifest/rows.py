"""Reading a manifest: CSV or JSON Lines rows, and the JSON/TOML file of default parameters."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from nst_batch.config import INIT_KEYWORDS
from nst_batch.engine.weights import NAMED_SOURCES
from nst_batch.errors import ConfigError, ManifestError
from nst_batch.jobs.video import VIDEO_PARAMS
from nst_batch.params import parameter_names, unknown_names

ROW_KEYS = ("content", "style", "output", "name")  # the non-parameter columns
STYLE_SEPARATOR = ";"  # several style images in one CSV cell / JSON string: "a.jpg;b.jpg"
MANIFEST_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


def _read_csv(text: str) -> tuple[list[tuple[int, dict[str, Any]]], list[tuple[int | None, str]]]:
    rows: list[tuple[int, dict[str, Any]]] = []
    problems: list[tuple[int | None, str]] = []
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = [(name or "").strip() for name in reader.fieldnames or []]
    except csv.Error as err:
        return [], [(1, f"cannot read the CSV header ({err})")]
    if not header:
        return [], [(None, "the manifest is empty (a CSV needs a header line)")]
    reader.fieldnames = header
    duplicated = sorted({h for h in header if header.count(h) > 1 and h})
    if duplicated:
        problems.append((1, f"column(s) {', '.join(duplicated)} appear more than once"))
    unknown = _unknown_keys(h for h in header if h)
    if unknown:
        problems.append((1, unknown))
    try:
        for record in reader:
            line = reader.line_num  # where the record ends: its line unless a cell spans lines
            extra = record.pop(None, None)  # type: ignore[call-overload]
            if extra:
                problems.append((line, f"{len(extra)} more cell(s) than the header's columns"))
            values = {k: (v or "").strip() for k, v in record.items() if k}
            if any(values.values()):  # a row of empty cells is a blank line
                rows.append((line, values))
    except csv.Error as err:
        problems.append((reader.line_num, f"cannot read CSV ({err})"))
    return rows, problems


def _read_jsonl(
    text: str,
) -> tuple[list[tuple[int, dict[str, Any]]], list[tuple[int | None, str]]]:
    rows: list[tuple[int, dict[str, Any]]] = []
    problems: list[tuple[int | None, str]] = []
    for line, item in enumerate(text.splitlines(), start=1):
        if not item.strip():
            continue
        try:
            value = json.loads(item)
        except ValueError as err:
            problems.append((line, f"not valid JSON ({err})"))
            continue
        if not isinstance(value, dict):
            problems.append((line, f"expected a JSON object, not {type(value).__name__}"))
            continue
        unknown = _unknown_keys(value)
        if unknown:
            problems.append((line, unknown))
            continue
        rows.append((line, value))
    return rows, problems


def _unknown_keys(keys: Iterable[str]) -> str:
    known = set(ROW_KEYS) | set(parameter_names()) | {"preset", *VIDEO_PARAMS}
    unknown = set(keys) - known
    return unknown_names(unknown, known, "column") if unknown else ""


def read_manifest(
    path: Path,
) -> tuple[list[tuple[int, dict[str, Any]]], list[tuple[int | None, str]]]:
    """The rows of a manifest as (line, values), and the problems found reading it."""
    kind = MANIFEST_FORMATS.get(path.suffix.lower())
    if kind is None:
        formats = ", ".join(MANIFEST_FORMATS)
        raise ManifestError(str(path), [(None, f"unknown manifest format; use {formats}")])
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: a spreadsheet's byte order mark
    except (OSError, UnicodeDecodeError) as err:
        raise ManifestError(str(path), [(None, f"cannot read the manifest ({err})")]) from None
    return _read_csv(text) if kind == "csv" else _read_jsonl(text)


def load_config_file(path: Path) -> dict[str, Any]:
    """Flat stylize parameters from a JSON object or a TOML table; paths relative to its folder."""
    try:
        if path.suffix.lower() == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                raise ConfigError(f"{path}: TOML needs Python 3.11+; use JSON") from None
            values: Any = tomllib.loads(path.read_text())
        else:
            values = json.loads(path.read_text())
    except (OSError, ValueError) as err:  # tomllib.TOMLDecodeError is a ValueError
        raise ConfigError(f"config file {path}: {err}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path}: expected an object of stylize parameters")
    unknown = set(values) - set(parameter_names()) - {"preset"}
    if unknown:
        raise ConfigError(f"config file {path}: {unknown_names(unknown, parameter_names())}")
    return resolve_parameter_paths(values, path.parent)


def resolve_parameter_paths(params: Mapping[str, Any], base: Path) -> dict[str, Any]:
    """``init`` and ``weights`` may name files: relative ones are relative to ``base``."""
    resolved = dict(params)
    for key, keywords in (("init", INIT_KEYWORDS), ("weights", tuple(NAMED_SOURCES))):
        value = resolved.get(key)
        if isinstance(value, str) and value.strip() and value.strip() not in keywords:
            resolved[key] = str(base / Path(value.strip()).expanduser())
    return resolved


def split_styles(value: Any) -> list[str]:
    """``"a.jpg;b.jpg"`` or ``["a.jpg", "b.jpg"]`` -> the style paths as written."""
    items = value if isinstance(value, list) else [value] if value not in (None, "") else []
    found: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ConfigError(f"style: expected a path or a list of paths, not {item!r}")
        found += [part.strip() for part in item.split(STYLE_SEPARATOR) if part.strip()]
    return found
