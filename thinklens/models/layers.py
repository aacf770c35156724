"""Find a model's decoder blocks, and with them the residual stream after block `layer`.

The heuristic (after sparsify): the decoder blocks are the `nn.ModuleList` whose length is the
config's number of hidden layers. It covers Llama, Qwen2, Qwen3, DeepseekV3, GPT-2 and most other
families without a table. Only where a model holds several such lists (a multimodal Gemma3 has a
vision tower beside the language model) does a short list of preferred paths break the tie.
"""

from __future__ import annotations

from torch import nn

from thinklens.errors import ThinklensError

# Checked in order when the heuristic finds several candidate lists.
_PREFERRED_BLOCK_PATHS = (
    "model.layers",
    "model.language_model.layers",
    "language_model.model.layers",
    "transformer.h",
)


def _text_config(model: nn.Module) -> object:
    """The language model's config (multimodal models keep it under `text_config`)."""
    return getattr(model.config, "text_config", None) or model.config


def d_model(model: nn.Module) -> int:
    """Width of the residual stream."""
    return int(_text_config(model).hidden_size)


def n_layers(model: nn.Module) -> int:
    """Number of decoder blocks, read from the (text) config."""
    config = _text_config(model)
    for attribute in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(config, attribute, None)
        if isinstance(value, int):
            return value
    raise ThinklensError(
        f"cannot tell how many layers {type(model).__name__} has: its config has no num_hidden_layers/n_layer/num_layers"
    )


def decoder_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The (dotted path, module list) of the model's decoder blocks."""
    count = n_layers(model)
    candidates = {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) == count
    }
    if len(candidates) == 1:
        return next(iter(candidates.items()))
    for path in _PREFERRED_BLOCK_PATHS:
        if path in candidates:
            return path, candidates[path]
    found = ", ".join(candidates) or "none"
    raise ThinklensError(
        f"cannot find the decoder blocks of {type(model).__name__}: looked for one nn.ModuleList of length "
        f"{count} (num_hidden_layers) and found {found}; preferred paths are {', '.join(_PREFERRED_BLOCK_PATHS)}"
    )


def block(model: nn.Module, layer: int) -> nn.Module:
    """Decoder block `layer` (0-based; negative counts from the end), whose output is `layers.{layer}.resid_post`."""
    _, blocks = decoder_blocks(model)
    if not -len(blocks) <= layer < len(blocks):
        raise ThinklensError(f"layer {layer} does not exist: {type(model).__name__} has layers 0..{len(blocks) - 1}")
    return blocks[layer]


def resolve_layer(model: nn.Module, layer: int) -> int:
    """Turn a possibly negative layer index into its 0-based index, checking it exists."""
    total = n_layers(model)
    if not -total <= layer < total:
        raise ThinklensError(f"layer {layer} does not exist: {type(model).__name__} has layers 0..{total - 1}")
    return layer % total
