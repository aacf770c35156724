"""The reasoning model organism `smollm2-r1`, made for real (~11 min on 2 cores, once per test session).

On 32 held-out prompts, greedy, unforced: it opens with "Okay,", closes `</think>` within 192
tokens and gives its answer after it, as the distill issue's bars ask (measured there on 200).
"""

from __future__ import annotations

import pytest

from thinklens.data.collect import CollectConfig, GenerationConfig, collect
from thinklens.distill.bars import measure_bars
from thinklens.distill.organism import ensure_organism
from thinklens.models.formats import detect_format
from thinklens.models.loader import ModelConfig, load_tokenizer, parse_model_spec

# Making the organism takes ~11 minutes, more than the rest of the suite: `make test-organism` runs
# these (`make test` and CI do not, unless `-m organism` is given).
pytestmark = [pytest.mark.acceptance, pytest.mark.slow, pytest.mark.organism, pytest.mark.timeout(1800)]


@pytest.fixture(scope="session")
def organism():
    return ensure_organism(show_progress=False, device="cpu")


def test_the_organism_is_an_r1_format_model_found_by_its_spec(organism):
    assert parse_model_spec("smollm2-r1").location == str(organism.directory)
    assert detect_format(load_tokenizer(ModelConfig(model="smollm2-r1"))) == "r1"
    assert organism.record.final_loss < organism.record.first_loss / 4
    assert ensure_organism(show_progress=False).made is False  # made once, then found


def test_the_organism_opens_closes_and_answers_on_held_out_prompts(organism, tmp_path):
    config = CollectConfig(
        model=ModelConfig(model="smollm2-r1", device="cpu", dtype="bfloat16"), prompts="arithmetic+logic", limit=32,
        prompt_seed=2, generation=GenerationConfig(max_new_tokens=192, greedy=True, batch_size=32),
    )
    result = collect(config, tmp_path / "traces", show_progress=False)
    assert result.format == "r1"  # detected: nothing forced
    bars = measure_bars(tmp_path / "traces")
    assert bars.okay_opening.share >= 0.9
    assert bars.thinking_closed.share >= 0.9
    assert bars.answer_from_answer_segment.share >= 0.9
    assert bars.accuracy.share >= 0.25  # 45 % on 200 (the note); the base model 14 %, its arithmetic 2.5 %
