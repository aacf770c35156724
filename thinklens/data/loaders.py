"""Load prompts from a built-in set, a local file or directory, or a Hugging Face dataset.

Every source becomes a list of `PromptRecord`. Rows are mapped by column name, so OpenR1-Math
(`problem`, `answer`, `generations`, `messages`, `uuid`), R1-Collect (`question` and the R1 response),
chat datasets (`messages`) and plain `prompt` / `text` data all load without configuration.

A trace shipped with the row (for `collect --import-traces`) is, in this order: the first of
`generations` (OpenR1-Math); a response column (`RESPONSE_COLUMNS`: R1-Collect's `question` + response
layout), joined to a separate reasoning column when there is one (`REASONING_COLUMNS`, as the DeepSeek
API returns `reasoning_content` beside `content`); the first assistant message of `messages`, whose
content holds the `<think>` block or whose `reasoning_content` / `reasoning` field holds the thinking.
A trace given as (thinking, answer) becomes `<think>\nthinking\n</think>\n\nanswer`, the text the
model wrote, so it is segmented like a generated one.
"""

from __future__ import annotations

import csv
import itertools
import json
from collections.abc import Iterable, Iterator
from itertools import zip_longest
from pathlib import Path
from typing import Any

import pyarrow as pa

from thinklens.data.procedural import BUILTIN_SETS, builtin_prompts
from thinklens.data.records import PromptRecord
from thinklens.errors import ThinklensError

DEFAULT_BUILTIN_SIZE = 1000
FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
PROMPT_COLUMNS = ("problem", "question", "prompt", "text")  # in order of priority
ID_COLUMNS = ("uuid", "id")
RESPONSE_COLUMNS = ("r1_response", "response", "completion", "output", "generation", "content")  # by priority
REASONING_COLUMNS = ("reasoning_content", "reasoning", "thinking")
# Columns that become fields of the record rather than metadata.
_MAPPED_COLUMNS = {*PROMPT_COLUMNS, *ID_COLUMNS, *RESPONSE_COLUMNS, *REASONING_COLUMNS, "answer", "generations",
                   "messages"}

Row = dict[str, Any]


def load_prompts(
    spec: str, limit: int | None = None, seed: int = 0, split: str = "train"
) -> list[PromptRecord]:
    """Load prompts named by `spec`.

    `spec` is a built-in set name (see `BUILTIN_SETS`; `seed` picks its stream and `limit`
    defaults to `DEFAULT_BUILTIN_SIZE`), a .jsonl/.json/.parquet/.csv file, a directory written
    by `datasets`' `save_to_disk`, or a Hugging Face dataset `org/name` (or `hf:org/name`) whose
    `split` is loaded. `limit` keeps the first N prompts; rows with an empty prompt are skipped.
    Several sources joined by '+' (`arithmetic+logic`) are interleaved, the limit shared evenly;
    each record keeps its own set's name as `source`, and sequence ids are renumbered in order.
    """
    if limit is not None and limit < 1:
        raise ThinklensError(f"limit must be at least 1, not {limit}; pass a positive limit or none for all")
    if "+" in spec:
        return _mixed_prompts(spec.split("+"), limit, seed, split)
    if spec in BUILTIN_SETS:
        return builtin_prompts(spec, DEFAULT_BUILTIN_SIZE if limit is None else limit, seed=seed)
    if spec.startswith("hf:"):
        name = spec.removeprefix("hf:")
        return _records(*_hf_rows(name, split), name, limit)

    path = Path(spec).expanduser()
    if path.is_dir():
        return _records(*_disk_rows(path, split), path.name, limit)
    if path.is_file():
        try:
            return _records(*_file_rows(path), path.stem, limit)
        except UnicodeDecodeError as exc:
            raise ThinklensError(f"{path} is not UTF-8 text (byte {exc.start} cannot be decoded): save it as UTF-8 "
                                 "or convert it to .parquet") from None
        except (pa.ArrowException, csv.Error) as exc:
            raise ThinklensError(f"{path} cannot be read as {path.suffix.lstrip('.')} "
                                 f"({str(exc).splitlines()[0][:120]}): check or re-export the file") from None
    if path.suffix.lower() in FILE_SUFFIXES or spec.startswith((".", "/", "~")):
        raise ThinklensError(f"prompt file {spec} does not exist; check the path")
    if spec.count("/") == 1 and all(spec.split("/")):
        return _records(*_hf_rows(spec, split), spec, limit)
    raise ThinklensError(
        f"unknown prompt source {spec!r}; name a built-in set ({', '.join(BUILTIN_SETS)}), "
        f"a {'/'.join(FILE_SUFFIXES)} file, a saved dataset directory, or a Hugging Face dataset 'org/name'"
    )


# ---------------------------------------------------------------- sources
# Each returns (column names, rows); rows are read lazily where the format allows.


def _file_rows(path: Path) -> tuple[list[str], Iterator[Row]]:
    suffix = path.suffix.lower()
    if suffix in FILE_SUFFIXES and path.stat().st_size == 0:
        raise ThinklensError(f"{path} is empty; give a file with at least one prompt")
    if suffix == ".parquet":
        return _parquet_rows(path)
    if suffix == ".csv":
        return _csv_rows(path)
    if suffix == ".jsonl":
        return _peek_columns(_jsonl_rows(path), path)
    if suffix == ".json":
        return _peek_columns(_json_rows(path), path)
    raise ThinklensError(f"cannot read {path}: use a {', '.join(FILE_SUFFIXES)} file")


def _peek_columns(rows: Iterator[Row], path: Path) -> tuple[list[str], Iterator[Row]]:
    """Columns of the first row, and all rows."""
    first = next(rows, None)
    if first is None:
        raise ThinklensError(f"{path} has no rows; give a file with at least one prompt")
    return list(first), itertools.chain([first], rows)


def _jsonl_rows(path: Path) -> Iterator[Row]:
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ThinklensError(
                    f"{path}:{number} is not valid JSON ({e.msg}); fix or remove that line"
                ) from e
            if not isinstance(row, dict):
                raise ThinklensError(f"{path}:{number} is not a JSON object; write one object per line")
            yield row


def _json_rows(path: Path) -> Iterator[Row]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ThinklensError(f"{path} is not valid JSON ({e.msg}); fix the file or save it as .jsonl") from e
    if isinstance(data, dict):
        # e.g. {"data": [...]}: a single list of rows under one key
        lists = [v for v in data.values() if isinstance(v, list)]
        data = lists[0] if len(lists) == 1 else None
    if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
        raise ThinklensError(f"{path} must hold a list of JSON objects (one per prompt); rewrite it that way")
    return iter(data)


def _csv_rows(path: Path) -> tuple[list[str], Iterator[Row]]:
    f = path.open(encoding="utf-8-sig", newline="")  # -sig: spreadsheets often write a BOM
    reader = csv.DictReader(f)
    if not reader.fieldnames:
        f.close()
        raise ThinklensError(f"{path} has no rows; give a file with a header and at least one prompt")

    def rows() -> Iterator[Row]:
        with f:
            yield from reader

    return list(reader.fieldnames), rows()


def _parquet_rows(path: Path) -> tuple[list[str], Iterator[Row]]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise ThinklensError(f"{path} is not a readable Parquet file ({_first_line(e)}); re-export it") from e

    def rows() -> Iterator[Row]:
        for batch in parquet.iter_batches(batch_size=1024):
            yield from batch.to_pylist()

    return parquet.schema_arrow.names, rows()


def _disk_rows(path: Path, split: str) -> tuple[list[str], Iterator[Row]]:
    import datasets

    try:
        dataset = datasets.load_from_disk(str(path))
    except FileNotFoundError as e:
        raise ThinklensError(
            f"{path} is a directory but not a saved dataset; pass a file or a `save_to_disk` directory"
        ) from e
    return _dataset_rows(dataset, split, str(path))


def _hf_rows(name: str, split: str) -> tuple[list[str], Iterator[Row]]:
    import datasets

    try:
        dataset = datasets.load_dataset(name, split=split)
    except Exception as e:  # network, auth, missing dataset or split: all reported the same way
        raise ThinklensError(
            f"could not load Hugging Face dataset {name!r} split {split!r} ({_first_line(e)}); "
            "check the name and split, or download it and pass the local path"
        ) from e
    return _dataset_rows(dataset, split, name)


def _dataset_rows(dataset: Any, split: str, name: str) -> tuple[list[str], Iterator[Row]]:
    import datasets

    if isinstance(dataset, datasets.DatasetDict):
        if split not in dataset:
            raise ThinklensError(f"{name} has no split {split!r}; choose one of: {', '.join(dataset)}")
        dataset = dataset[split]
    return list(dataset.column_names), iter(dataset)


# ---------------------------------------------------------------- rows to records


def _records(columns: list[str], rows: Iterable[Row], source: str, limit: int | None) -> list[PromptRecord]:
    """Map rows to records, skipping rows with an empty prompt; stop after `limit` records."""
    if not any(c in columns for c in (*PROMPT_COLUMNS, "messages")):
        raise ThinklensError(
            f"{source}: no prompt column among {', '.join(columns) or '(none)'}; "
            f"rename the prompt column to one of: {', '.join((*PROMPT_COLUMNS, 'messages'))}"
        )
    records: list[PromptRecord] = []
    saw_row = False
    for index, row in enumerate(rows):
        saw_row = True
        prompt = _prompt(row)
        if not prompt:
            continue
        record_id = next((row[c] for c in ID_COLUMNS if row.get(c) not in (None, "")), None)
        answer = row.get("answer")
        records.append(
            PromptRecord(
                sequence_id=len(records),
                prompt_id=str(record_id) if record_id is not None else f"{source}-{index:06d}",
                source=source,
                prompt=prompt,
                answer=None if answer in (None, "") else str(answer),
                metadata={k: v for k, v in row.items() if k not in _MAPPED_COLUMNS and _is_scalar(v)},
                completion=_completion(row),
            )
        )
        if limit is not None and len(records) >= limit:
            break
    if not saw_row:
        raise ThinklensError(f"{source} has no rows; give a source with at least one prompt")
    if not records:
        raise ThinklensError(f"every row of {source} has an empty prompt; fill the prompt column")
    return records


def _prompt(row: Row) -> str | None:
    """The prompt text: problem > question > prompt > text > first user message."""
    for column in PROMPT_COLUMNS:
        value = row.get(column)
        if isinstance(value, str) and value.strip():
            return value
    return _first_message(row, "user")


def _completion(row: Row) -> str | None:
    """A trace shipped with the row (the module docstring's order), as the text the model wrote."""
    generations = row.get("generations")
    if isinstance(generations, list) and generations and isinstance(generations[0], str):
        return generations[0] or None
    response = next((row[c] for c in RESPONSE_COLUMNS if isinstance(row.get(c), str) and row[c].strip()), None)
    if response is not None:
        return with_thinking(_text_in(row, REASONING_COLUMNS), response)
    message = _message(row, "assistant")
    if message is None:
        return None
    content = message.get("content") if isinstance(message.get("content"), str) else ""
    trace = with_thinking(_text_in(message, REASONING_COLUMNS), content)
    return trace if trace.strip() else None


def with_thinking(thinking: str | None, answer: str) -> str:
    """The completion a reasoning model writes for `thinking` and `answer` (just `answer` without thinking,
    or when the answer already holds its `<think>` block)."""
    if not thinking or "</think>" in answer:
        return answer
    return f"<think>\n{thinking.strip()}\n</think>\n\n{answer.lstrip()}"


def _text_in(row: Row, columns: tuple[str, ...]) -> str | None:
    return next((row[c] for c in columns if isinstance(row.get(c), str) and row[c].strip()), None)


def _message(row: Row, role: str) -> dict[str, Any] | None:
    messages = row.get("messages")
    if not isinstance(messages, list):
        return None
    return next((m for m in messages if isinstance(m, dict) and m.get("role") == role), None)


def _first_message(row: Row, role: str) -> str | None:
    message = _message(row, role)
    content = None if message is None else message.get("content")
    return content if isinstance(content, str) and content.strip() else None


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _mixed_prompts(specs: list[str], limit: int | None, seed: int, split: str) -> list[PromptRecord]:
    """Interleave several sources: record i of each set in turn, so any prefix of the mix is balanced."""
    if not all(specs):
        raise ThinklensError("an empty name in a '+'-joined prompt spec; write e.g. 'arithmetic+logic'")
    share = None if limit is None else -(-limit // len(specs))  # ceil: every set gets its share
    sets = [load_prompts(spec, share, seed, split) for spec in specs]
    mixed = [record for group in zip_longest(*sets) for record in group if record is not None]
    mixed = mixed[:limit] if limit is not None else mixed
    return [record.model_copy(update={"sequence_id": i}) for i, record in enumerate(mixed)]
