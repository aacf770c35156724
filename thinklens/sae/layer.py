"""Which layer an SAE reads: one rule for eval, index, shift, explain and steering (train validates with it).

The rule:
- the SAE's own layer (its cfg.json) is the layer; an explicit layer may restate it but never
  contradict it (that would encode one layer with an SAE trained on another);
- an SAE that names no layer (a foreign file) needs the layer given explicitly — it is never guessed;
- the layer must be one the activations (or the model) hold.
"""

from __future__ import annotations

from collections.abc import Sequence

from thinklens.errors import ThinklensError


def resolve_sae_layer(
    sae_layer: int | None,
    held: Sequence[int],
    override: int | None = None,
    *,
    sae: str = "the SAE",
    holder: str = "the activations",
    fix: str = "pass --layer L",
    harvestable: bool = True,
) -> int:
    """The layer to read for an SAE: its own (`sae_layer`), else `override`; it must be in `held`.

    `sae`, `holder`, `fix` and `harvestable` only word the error messages ("the SAE in runs/x/sae",
    "the activations", "pass --layer L"; whether harvesting the layer is a fix). Raises
    ThinklensError when the SAE names no layer and none is given, when `override` contradicts the
    SAE's layer, or when the layer is not held.
    """
    held = sorted(held)
    if sae_layer is not None and override is not None and sae_layer != override:
        raise ThinklensError(
            f"{sae} reads layer {sae_layer} but layer {override} was asked: drop the layer setting "
            f"or use an SAE trained on layer {override}"
        )
    layer = sae_layer if sae_layer is not None else override
    if layer is None:
        raise ThinklensError(f"{sae} names no layer: {fix} (layers in {holder}: {_listed(held)})")
    if layer not in held:
        remedy = f"harvest layer {layer} or use one of those" if harvestable else "use one of those"
        raise ThinklensError(f"layer {layer} is not in {holder} (layers there: {_listed(held)}): {remedy}")
    return layer


def _listed(layers: Sequence[int]) -> str:
    """1, 3 — or a range for a model's full list: 0..23."""
    if len(layers) > 4 and list(layers) == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}..{layers[-1]}"
    return ", ".join(str(layer) for layer in layers) or "none"
