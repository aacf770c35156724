"""load_prompts: built-in sets, each file format, saved datasets, and the one-line user errors."""

import csv
import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from thinklens.data.loaders import DEFAULT_BUILTIN_SIZE, load_prompts
from thinklens.data.procedural import builtin_prompts
from thinklens.errors import ThinklensError

OPENR1_ROWS = [
    {
        "problem": "What is 2 + 2?",
        "answer": "4",
        "uuid": "a1b2",
        "problem_type": "Algebra",
        "generations": ["<think>2 + 2 is 4.</think> \\boxed{4}", "second try"],
        "messages": [
            {"role": "user", "content": "What is 2 + 2?"},
            {"role": "assistant", "content": "from messages"},
        ],
    },
    {
        "problem": "",  # skipped: empty prompt
        "answer": "0",
        "uuid": "c3d4",
        "problem_type": "Algebra",
        "generations": [],
        "messages": [],
    },
    {
        "problem": "Find x if 3x = 12.",
        "answer": "4",
        "uuid": "e5f6",
        "problem_type": "Algebra",
        "generations": [],
        "messages": [
            {"role": "user", "content": "Find x if 3x = 12."},
            {"role": "assistant", "content": "<think>12 / 3</think> x = 4"},
        ],
    },
]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def test_builtin_name_gives_the_builtin_set():
    assert load_prompts("logic", limit=20, seed=4) == builtin_prompts("logic", 20, seed=4)
    assert len(load_prompts("arithmetic")) == DEFAULT_BUILTIN_SIZE


def test_openr1_math_parquet(tmp_path):
    path = tmp_path / "openr1.parquet"
    pq.write_table(pa.Table.from_pylist(OPENR1_ROWS), path)
    records = load_prompts(str(path))
    # 3 rows, the middle one has an empty problem -> 2 records, numbered 0 and 1.
    assert [r.sequence_id for r in records] == [0, 1]
    first, second = records
    assert (first.prompt, first.answer, first.prompt_id, first.source) == (
        "What is 2 + 2?",
        "4",
        "a1b2",
        "openr1",
    )
    # generations win over messages for the completion; without generations, the assistant message.
    assert first.completion == "<think>2 + 2 is 4.</think> \\boxed{4}"
    assert second.completion == "<think>12 / 3</think> x = 4"
    assert first.metadata == {"problem_type": "Algebra"}


def test_parquet_limit_reads_first_rows(tmp_path):
    path = tmp_path / "many.parquet"
    pq.write_table(pa.table({"prompt": [f"p{i}" for i in range(5000)]}), path)
    records = load_prompts(str(path), limit=3)
    assert [r.prompt for r in records] == ["p0", "p1", "p2"]
    assert records[2].prompt_id == "many-000002"


def test_r1_collect_jsonl(tmp_path):
    path = tmp_path / "r1_collect.jsonl"
    _write_jsonl(path, [{"question": "Why is the sky blue?", "answer": 42}, {"question": "Second?"}])
    path.write_text(path.read_text() + "\n\n")  # trailing blank lines are ignored
    records = load_prompts(str(path))
    assert [r.prompt for r in records] == ["Why is the sky blue?", "Second?"]
    assert records[0].answer == "42"  # stringified
    assert records[1].answer is None
    assert records[0].completion is None
    assert records[0].source == "r1_collect"


def test_prompt_priority_problem_over_question_over_prompt_over_text(tmp_path):
    path = tmp_path / "mixed.jsonl"
    _write_jsonl(
        path,
        [
            {"problem": "P", "question": "Q", "prompt": "R", "text": "T"},
            {"question": "Q", "prompt": "R", "text": "T"},
            {"prompt": "R", "text": "T"},
            {"text": "T"},
            {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]},
        ],
    )
    assert [r.prompt for r in load_prompts(str(path))] == ["P", "Q", "R", "T", "U"]


def test_json_list_and_wrapped_list(tmp_path):
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps([{"text": "one"}, {"text": "two"}]))
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"data": [{"text": "one"}, {"text": "two"}]}))
    assert [r.prompt for r in load_prompts(str(plain))] == ["one", "two"]
    assert [r.prompt for r in load_prompts(str(wrapped), limit=1)] == ["one"]


def test_csv_with_prompt_column(tmp_path):
    path = tmp_path / "prompts.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["prompt", "answer", "topic"])
        writer.writeheader()
        writer.writerows(
            [
                {"prompt": "What is 6 × 7?", "answer": "42", "topic": "times"},
                {"prompt": "", "answer": "1", "topic": "empty"},
                {"prompt": "Name a prime, please", "answer": "", "topic": "primes"},
            ]
        )
    records = load_prompts(str(path))
    assert [r.prompt for r in records] == ["What is 6 × 7?", "Name a prime, please"]
    assert [r.answer for r in records] == ["42", None]
    assert records[0].metadata == {"topic": "times"}
    # The empty row was row 1, so the kept rows keep their row number in the id.
    assert [r.prompt_id for r in records] == ["prompts-000000", "prompts-000002"]


def test_saved_dataset_directory(tmp_path):
    rows = {"problem": ["a?", "b?", "c?"], "answer": ["1", "2", "3"], "uuid": ["u1", "u2", "u3"]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "single"))
    datasets.DatasetDict({"test": datasets.Dataset.from_dict(rows)}).save_to_disk(str(tmp_path / "splits"))

    records = load_prompts(str(tmp_path / "single"), limit=2)
    assert [(r.prompt, r.answer, r.prompt_id) for r in records] == [("a?", "1", "u1"), ("b?", "2", "u2")]
    assert records[0].source == "single"
    assert len(load_prompts(str(tmp_path / "splits"), split="test")) == 3
    with pytest.raises(ThinklensError, match="no split 'train'; choose one of: test"):
        load_prompts(str(tmp_path / "splits"))


def test_hub_name_calls_load_dataset(monkeypatch):
    calls = []

    def fake_load_dataset(name, split):
        calls.append((name, split))
        return datasets.Dataset.from_dict({"problem": ["x?"], "answer": [7]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    for spec in ("open-r1/OpenR1-Math-220k", "hf:open-r1/OpenR1-Math-220k"):
        (record,) = load_prompts(spec, split="default")
        assert (record.prompt, record.answer, record.source) == ("x?", "7", "open-r1/OpenR1-Math-220k")
    assert calls == [("open-r1/OpenR1-Math-220k", "default")] * 2


def test_hub_failure_is_one_line():
    # The real loader, offline (conftest sets HF_HUB_OFFLINE): the hub cannot be reached.
    with pytest.raises(ThinklensError) as error:
        load_prompts("thinklens-test/not-a-dataset")
    assert "\n" not in str(error.value)
    assert "could not load Hugging Face dataset 'thinklens-test/not-a-dataset'" in str(error.value)


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nope.jsonl"
    with pytest.raises(ThinklensError, match=f"{path} does not exist"):
        load_prompts(str(path))


@pytest.mark.parametrize("name", ["empty.jsonl", "empty.json", "empty.csv", "empty.parquet"])
def test_empty_file(tmp_path, name):
    path = tmp_path / name
    path.write_text("")
    with pytest.raises(ThinklensError, match="empty"):
        load_prompts(str(path))


def test_files_without_rows(tmp_path):
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n\n")
    header_only = tmp_path / "header.csv"
    header_only.write_text("prompt,answer\n")
    no_rows = tmp_path / "none.parquet"
    pq.write_table(pa.table({"prompt": pa.array([], pa.string())}), no_rows)
    for path in (blank, header_only, no_rows):
        with pytest.raises(ThinklensError, match="no rows"):
            load_prompts(str(path))


def test_all_prompts_empty(tmp_path):
    path = tmp_path / "blank_prompts.jsonl"
    _write_jsonl(path, [{"prompt": ""}, {"prompt": "   "}])
    with pytest.raises(ThinklensError, match="empty prompt"):
        load_prompts(str(path))


def test_unmappable_columns_name_found_and_accepted(tmp_path):
    path = tmp_path / "odd.jsonl"
    _write_jsonl(path, [{"query": "hi", "label": 1}])
    with pytest.raises(ThinklensError) as error:
        load_prompts(str(path))
    message = str(error.value)
    assert "query, label" in message
    assert "problem, question, prompt, text, messages" in message


def test_bad_json_line_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "ok"}\n{"prompt": \n')
    with pytest.raises(ThinklensError, match="bad.jsonl:2"):
        load_prompts(str(path))


def test_unknown_spec_and_bad_limit(tmp_path):
    with pytest.raises(ThinklensError, match="name a built-in set \\(arithmetic, logic\\)"):
        load_prompts("algebra")
    with pytest.raises(ThinklensError, match="positive limit"):
        load_prompts("logic", limit=0)
    other = tmp_path / "prompts.txt"
    other.write_text("hello")
    with pytest.raises(ThinklensError, match=".jsonl, .json, .parquet, .csv"):
        load_prompts(str(other))
