"""Run the model and the SAE on a text and list the features firing on each token."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from thinklens.activations.capture import run_to_layers
from thinklens.models.loader import LoadedModel
from thinklens.sae.formats import check_width
from thinklens.sae.sae import Sae


@dataclass
class TokenFeatures:
    token: str
    massive: bool  # residual norm far above the text's median: the SAE was not trained on such tokens
    features: list[tuple[int, float]]  # strongest first


@torch.no_grad()
def explain_text(loaded: LoadedModel, sae: Sae, text: str, top: int = 5, massive_ratio: float = 5.0) -> list[TokenFeatures]:
    """Per token of `text`: its `top` active features (feature_id, activation)."""
    layer = sae.config.layer if sae.config.layer is not None else 0
    encoded = loaded.tokenizer(text, return_tensors="pt").to(loaded.device)
    hidden = run_to_layers(loaded.model, encoded["input_ids"], encoded["attention_mask"], [layer])[layer][0]
    check_width(sae, hidden.shape[-1], f"layer {layer} of {loaded.spec.name}")
    hidden = hidden.float().cpu()
    norms = hidden.norm(dim=-1)
    massive = norms > massive_ratio * norms.median()
    acts = sae.encode(hidden, batch_dependent=False).dense()  # (n_tokens, d_sae)
    best = acts.topk(min(top, acts.shape[1]), dim=-1)
    result = []
    for position, token_id in enumerate(encoded["input_ids"][0].tolist()):
        pairs = [(int(f), float(v)) for v, f in zip(best.values[position], best.indices[position], strict=True) if v > 0]
        result.append(TokenFeatures(loaded.tokenizer.decode([token_id]), bool(massive[position]), pairs))
    return result
