"""Read a text source, given as one string, into a list of documents.

Accepted sources: `embedded` / `embedded:<name>`; a `.txt` file (documents separated by blank
lines) or a folder of `.txt` files; `.jsonl`, `.jsonl.gz`, `.json` and `.parquet` files with a
text field; a `datasets.save_to_disk` folder (a Dataset, or a DatasetDict from which the
`train` split, else the first one, is read). Hub datasets are read by `hub.py`.
"""

from __future__ import annotations

import gzip
import json
import logging
import re
from pathlib import Path

from ..errors import UserError
from .embedded import embedded_documents, is_embedded

log = logging.getLogger(__name__)

ROW_FORMATS = (".jsonl", ".jsonl.gz", ".json", ".parquet")
ACCEPTED = ("'embedded[:boolq|sciq|lambada]', a .txt/.jsonl/.jsonl.gz/.json/.parquet file, a folder of .txt files, "
            "a datasets.save_to_disk folder or a hub dataset id (owner/name or hf:name)")
PARAGRAPH_BREAK = re.compile(r"\n[ \t\r\f\v]*\n")


def load_documents(source: str, text_field: str = "text") -> list[str]:
    """Read `source` into documents, stripped of surrounding whitespace; empty ones are dropped.

    Args:
        source: `embedded[:<name>]`, a file or a folder (see the module docstring).
        text_field: the column holding the text in json, parquet and datasets sources.

    Raises:
        UserError: for a missing path, an unknown format, a missing text field or no text at all.
    """
    raw = embedded_documents(source) if is_embedded(source) else _read_path(_existing_path(source), text_field)
    documents = [text.strip() for text in raw if text and text.strip()]
    if not documents:
        raise UserError(f"data source {source} holds no non-empty documents; give a source with text")
    log.info("read %d documents from %s", len(documents), source)
    return documents


def _existing_path(source: str) -> Path:
    path = Path(source).expanduser()
    if not path.exists():
        raise UserError(f"data source not found: {source}; give {ACCEPTED}")
    return path


def _read_path(path: Path, text_field: str) -> list[str]:
    if path.is_dir():
        if _is_saved_dataset(path):
            return _read_saved_dataset(path, text_field)
        return _read_text_folder(path)
    name = path.name.lower()
    if name.endswith(".txt"):
        return _read_text_file(path)
    if name.endswith((".jsonl", ".jsonl.gz", ".json")):
        return _field_values(_read_json_rows(path), text_field, path)
    if name.endswith(".parquet"):
        return _read_parquet(path, text_field)
    raise UserError(f"unknown data format for {path}; give {ACCEPTED}")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); convert it to UTF-8") from None


def _read_text_file(path: Path) -> list[str]:
    return PARAGRAPH_BREAK.split(_read_text(path))


def _read_text_folder(folder: Path) -> list[str]:
    files = sorted(p for p in folder.rglob("*.txt") if p.is_file())
    if not files:
        raise UserError(f"folder {folder} has no .txt files and is not a datasets.save_to_disk folder; "
                        f"give {ACCEPTED}")
    return [doc for path in files for doc in _read_text_file(path)]


def _read_json_rows(path: Path) -> list:
    try:
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            content = f.read()
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    if path.name.lower().endswith(".json"):
        try:
            rows = json.loads(content)
        except json.JSONDecodeError:
            rows = None  # maybe JSON Lines under a .json name
        if isinstance(rows, list):
            return rows
        if rows is not None:
            raise UserError(f"{path} holds a JSON {type(rows).__name__}; expected a list of objects or JSON Lines")
    rows = []
    for number, line in enumerate(content.splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise UserError(f"{path} line {number} is not valid JSON ({e.msg}); fix or remove that line") from None
    return rows


def _field_values(rows: list, text_field: str, path: Path) -> list[str]:
    if not rows:
        return []
    if not all(isinstance(row, dict) for row in rows):
        raise UserError(f"{path} rows must be JSON objects with a {text_field!r} field")
    if not any(text_field in row for row in rows):
        available = sorted({key for row in rows[:100] for key in row})
        raise UserError(f"{path} has no field {text_field!r}; available fields: {', '.join(available)}; "
                        "choose one with data.text_field")
    values = [row.get(text_field) for row in rows]
    for number, value in enumerate(values, start=1):
        if value is not None and not isinstance(value, str):
            raise UserError(f"{path} row {number}: field {text_field!r} is a {type(value).__name__}, not text")
    return [value for value in values if value]


def _read_parquet(path: Path, text_field: str) -> list[str]:
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
        if text_field not in names:
            raise UserError(f"{path} has no column {text_field!r}; available columns: {', '.join(names)}; "
                            "choose one with data.text_field")
        values = pq.read_table(path, columns=[text_field]).column(text_field).to_pylist()
    except UserError:
        raise
    except Exception as e:  # pyarrow raises several types for damaged files
        raise UserError(f"cannot read parquet file {path}: {e}") from None
    return _text_values(values, text_field, path)


def _text_values(values: list, text_field: str, where: Path) -> list[str]:
    if any(value is not None and not isinstance(value, str) for value in values):
        raise UserError(f"column {text_field!r} of {where} does not hold text; choose a text column with "
                        "data.text_field")
    return [value for value in values if value]


def _is_saved_dataset(folder: Path) -> bool:
    return (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()


def _read_saved_dataset(folder: Path, text_field: str) -> list[str]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(folder))
    except Exception as e:  # datasets raises several types for damaged folders
        raise UserError(f"cannot load datasets folder {folder}: {e}") from None
    if isinstance(loaded, datasets.DatasetDict):
        if not loaded:
            raise UserError(f"datasets folder {folder} has no splits")
        split = "train" if "train" in loaded else next(iter(loaded))
        log.info("reading split %r of %s", split, folder)
        loaded = loaded[split]
    if text_field not in loaded.column_names:
        raise UserError(f"dataset {folder} has no column {text_field!r}; available columns: "
                        f"{', '.join(loaded.column_names)}; choose one with data.text_field")
    return _text_values(list(loaded[text_field]), text_field, folder)
