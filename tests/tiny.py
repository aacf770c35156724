"""Tiny random models and tokenizers of each family users bring, built from configs (no downloads).

The tokenizer is a byte-level BPE trained in a fraction of a second on a small corpus, with the
special tokens and chat templates of the R1 distills, Qwen3 and a ChatML instruct model.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

R1_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'] }}"
    "{% elif message['role'] == 'user' %}{{ '<｜User｜>' + message['content'] }}"
    "{% elif message['role'] == 'assistant' %}{{ '<｜Assistant｜>' + message['content'] + '<｜end▁of▁sentence｜>' }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<｜Assistant｜><think>\\n' }}{% endif %}"
)
QWEN3_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n\\n' }}{% endif %}"
    "{% endif %}"
)
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
TEMPLATES = {"r1": R1_TEMPLATE, "qwen3": QWEN3_TEMPLATE, "chatml": CHATML_TEMPLATE, "none": None}
SPECIAL_TOKENS = [
    "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>",
    "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<pad>",
]
CORPUS = [
    "Okay, so the user has asked a question about arithmetic. Let me think step by step.",
    "Alright, I need to compute 37 times 4, which is 148. Wait, let me check: 4 x 37 = 148.",
    "Hmm, so Alice is taller than Bob and Bob is taller than Carol. The answer is Alice.",
    "So the answer is \\boxed{42}. First, add 12 and 5 to get 17. Then subtract 3.",
    "Café naïve résumé — 日本語のテキスト ✓ emoji 🙂 math ÷ × − ≤ ≥",
] * 20
VOCAB_SIZE = 512


def build_tokenizer(directory: Path, template: str = "chatml") -> PreTrainedTokenizerFast:
    """A small byte-level BPE tokenizer with reasoning special tokens, saved to `directory`."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(CORPUS, trainer)
    is_r1 = template == "r1"
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<｜begin▁of▁sentence｜>" if is_r1 else None,
        eos_token="<｜end▁of▁sentence｜>" if is_r1 else "<|im_end|>",
        pad_token="<pad>",
    )
    tokenizer.chat_template = TEMPLATES[template]
    tokenizer.save_pretrained(directory)
    return tokenizer


def _common(tokenizer: PreTrainedTokenizerFast) -> dict:
    return {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def family_config(family: str, tokenizer: PreTrainedTokenizerFast) -> transformers.PretrainedConfig:
    """A 2–4 layer config of `family` small enough to build and run in milliseconds."""
    small = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "max_position_embeddings": 512}
    common = _common(tokenizer)
    if family == "llama":
        return transformers.LlamaConfig(num_hidden_layers=3, num_key_value_heads=2, **small, **common)
    if family == "qwen2":
        return transformers.Qwen2Config(num_hidden_layers=2, num_key_value_heads=2, **small, **common)
    if family == "qwen3":
        return transformers.Qwen3Config(num_hidden_layers=2, num_key_value_heads=2, head_dim=16, **small, **common)
    if family == "gemma3":
        return transformers.Gemma3TextConfig(
            num_hidden_layers=3, num_key_value_heads=1, head_dim=16, sliding_window=16, **small, **common
        )
    if family == "deepseek_v3":
        return transformers.DeepseekV3Config(
            num_hidden_layers=3, num_key_value_heads=4, first_k_dense_replace=1, n_routed_experts=4,
            num_experts_per_tok=2, n_group=1, topk_group=1, moe_intermediate_size=32, kv_lora_rank=16,
            q_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16, **small, **common,
        )
    if family == "gpt2":
        return transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=512, **common)
    raise ValueError(f"no tiny config for {family}")


FAMILIES = ("llama", "qwen2", "qwen3", "gemma3", "deepseek_v3", "gpt2")
TEMPLATE_OF_FAMILY = {"qwen2": "r1", "llama": "r1", "deepseek_v3": "r1", "qwen3": "qwen3", "gemma3": "chatml", "gpt2": "none"}


def build_tiny_model(family: str, directory: Path, seed: int = 0, **overrides) -> Path:
    """Save a random tiny model of `family` (config fields `overrides` changed) and a matching tokenizer to
    `directory`; returns it."""
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(directory, TEMPLATE_OF_FAMILY[family])
    torch.manual_seed(seed)
    config = family_config(family, tokenizer)
    for name, value in overrides.items():
        setattr(config, name, value)
    model = transformers.AutoModelForCausalLM.from_config(config)
    model.save_pretrained(directory)
    return directory
