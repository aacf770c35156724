"""Our KV-cache generation loop: same greedy tokens as transformers' generate, seeded sampling."""

from __future__ import annotations

import pytest
import torch

from thinklens.models.generate import Sampling, generate, next_tokens
from thinklens.models.loader import ModelConfig, load_model

PROMPTS = ["Okay, so the user", "Hmm", "Alice is taller than Bob and Bob is taller than Carol. So"]


def _batch(tokenizer):
    tokenizer.padding_side = "left"
    return tokenizer(PROMPTS, return_tensors="pt", padding=True)


@pytest.mark.integration
@pytest.mark.parametrize("family", ["qwen2", "llama", "gemma3", "deepseek_v3", "gpt2"])
def test_greedy_matches_transformers_generate(tiny_models, family):
    loaded = load_model(ModelConfig(model=str(tiny_models[family]), device="cpu"))
    tokenizer, model = loaded.tokenizer, loaded.model
    encoded = _batch(tokenizer)
    # A frequent token as EOS, so that rows finish at different steps and leave the batch early.
    eos = int(torch.mode(model.generate(**encoded, max_new_tokens=6, do_sample=False)[:, -6:].flatten()).values)
    ours = generate(model, encoded["input_ids"], encoded["attention_mask"], 12, [eos], Sampling(greedy=True))
    reference = model.generate(
        **encoded, max_new_tokens=12, do_sample=False, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id
    )[:, encoded["input_ids"].shape[1] :].tolist()
    assert any(completion.finish_reason == "eos" for completion in ours)
    for completion, expected in zip(ours, reference, strict=True):
        assert completion.token_ids == expected[: len(completion.token_ids)]
        stopped_at_eos = completion.token_ids[-1] == eos
        assert completion.finish_reason == ("eos" if stopped_at_eos else "length")
        assert stopped_at_eos or len(completion.token_ids) == 12


@pytest.mark.integration
def test_sampling_is_seeded_and_leaves_global_rng_alone(tiny_models):
    loaded = load_model(ModelConfig(model=str(tiny_models["qwen2"]), device="cpu"))
    encoded = _batch(loaded.tokenizer)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    runs = [generate(loaded.model, encoded["input_ids"], encoded["attention_mask"], 10, [-1], Sampling(), seed=s)
            for s in (7, 7, 8)]
    assert torch.rand(1) == before
    ids = [[completion.token_ids for completion in run] for run in runs]
    assert ids[0] == ids[1] != ids[2]


def test_top_p_keeps_the_smallest_set_reaching_the_mass():
    # probs 0.5, 0.3, 0.15, 0.05: with top_p 0.7 the nucleus is {0, 1} (0.5 < 0.7 ≤ 0.8).
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(2000, 1)
    picks = next_tokens(logits, Sampling(temperature=1.0, top_p=0.7), torch.Generator().manual_seed(0))
    assert set(picks.tolist()) == {0, 1}
    share_of_first = (picks == 0).float().mean().item()
    assert abs(share_of_first - 0.5 / 0.8) < 0.05
    assert next_tokens(logits[:1], Sampling(greedy=True), None).tolist() == [0]
