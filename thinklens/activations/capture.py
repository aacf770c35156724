"""Forward hooks that capture `layers.{i}.resid_post`, the residual stream after decoder block i.

Hooks live only inside the `capture_resid_post` context manager and are removed on exit, even after
an exception. When nothing after the last captured block is needed, the hook of that block stops
the forward pass, so neither the later blocks nor the unembedding run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from thinklens.models.layers import decoder_blocks, resolve_layer


class _StopForward(Exception):
    """Raised by the last needed hook to end the forward pass early."""


def activation_name(layer: int) -> str:
    """The path-like name of a captured activation: `layers.{layer}.resid_post`."""
    return f"layers.{layer}.resid_post"


@contextmanager
def capture_resid_post(
    model: nn.Module, layers: Sequence[int], stop_early: bool = True
) -> Iterator[dict[int, torch.Tensor]]:
    """Yield a dict that each forward pass fills with {layer: hidden (batch, seq, d_model)}."""
    _, blocks = decoder_blocks(model)
    wanted = sorted({resolve_layer(model, layer) for layer in layers})
    captured: dict[int, torch.Tensor] = {}

    def hook_for(layer: int):
        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            hidden = output[0] if isinstance(output, tuple) else output
            captured[layer] = hidden.detach()
            if stop_early and layer == wanted[-1]:
                raise _StopForward

        return hook

    handles = [blocks[layer].register_forward_hook(hook_for(layer)) for layer in wanted]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


@torch.inference_mode()
def run_to_layers(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, layers: Sequence[int]
) -> dict[int, torch.Tensor]:
    """One teacher-forced forward pass, stopped after the last of `layers`; returns their residuals."""
    with capture_resid_post(model, layers) as captured:
        try:
            model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except _StopForward:
            pass
    return dict(captured)


@contextmanager
def edit_resid_post(
    model: nn.Module, layer: int, edit: Callable[[torch.Tensor], torch.Tensor]
) -> Iterator[None]:
    """Replace block `layer`'s output (batch, seq, d_model) by `edit(output)` for every forward pass inside."""
    _, blocks = decoder_blocks(model)

    def hook(_module: nn.Module, _inputs: object, output: object) -> object:
        if isinstance(output, tuple):
            return (edit(output[0]), *output[1:])
        return edit(output)

    handle = blocks[resolve_layer(model, layer)].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
