"""Run the model and the SAE on a text and list the features firing on each token."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from thinklens.activations.capture import run_to_layers
from thinklens.errors import ThinklensError
from thinklens.models.layers import n_layers
from thinklens.models.loader import LoadedModel, check_fits
from thinklens.sae.formats import check_same_model, check_width
from thinklens.sae.layer import resolve_sae_layer
from thinklens.sae.sae import Sae


@dataclass
class TokenFeatures:
    token: str
    massive: bool  # residual norm far above the text's median: the SAE was not trained on such tokens
    features: list[tuple[int, float]]  # strongest first


@torch.no_grad()
def explain_text(loaded: LoadedModel, sae: Sae, text: str, top: int = 5, massive_ratio: float = 5.0,
                 layer: int | None = None) -> list[TokenFeatures]:
    """Per token of `text`: its `top` active features (feature_id, activation).

    The layer is the SAE's own; `layer` is needed only for an SAE that names none (e.g. the layer
    its feature database was indexed on) and may not contradict it.
    """
    layer = resolve_sae_layer(sae.config.layer, range(n_layers(loaded.model)), layer,
                              holder=f"the model {loaded.spec.name}", harvestable=False)
    if not text.strip():
        raise ThinklensError("the text to explain is empty: give some text")
    encoded = loaded.tokenizer(text, return_tensors="pt").to(loaded.device)
    check_fits(loaded, encoded["input_ids"].shape[1], "the text", "explain a shorter text (split it)")
    hidden = run_to_layers(loaded.model, encoded["input_ids"], encoded["attention_mask"], [layer])[layer][0]
    check_width(sae, hidden.shape[-1], f"layer {layer} of {loaded.spec.name}")
    hidden = hidden.float().to(sae.device)
    norms = hidden.norm(dim=-1)
    massive = norms > massive_ratio * norms.median()
    acts = sae.encode(hidden, batch_dependent=False).dense()  # (n_tokens, d_sae)
    best = acts.topk(min(top, acts.shape[1]), dim=-1)
    result = []
    for position, token_id in enumerate(encoded["input_ids"][0].tolist()):
        pairs = [(int(f), float(v)) for v, f in zip(best.values[position], best.indices[position], strict=True) if v > 0]
        result.append(TokenFeatures(loaded.tokenizer.decode([token_id]), bool(massive[position]), pairs))
    return result


def explain_run_text(traces_dir: Path, sae_dir: Path, db_path: Path, text: str, top: int = 5,
                     allow_other_model: bool = False) -> list[TokenFeatures]:
    """`explain_text` with a run's own model (the traces' model, else the SAE's) and its SAE, which must
    have been trained on that model unless `allow_other_model`.

    An SAE that names no layer is read at the layer its feature database was indexed on.
    """
    from thinklens.data.traces import TraceStore
    from thinklens.features.db import FeatureDB
    from thinklens.models.loader import ModelConfig, load_model
    from thinklens.sae.formats import load_sae, refuse_imported_without_model

    sae = load_sae(sae_dir)
    traces = TraceStore(traces_dir)
    if not traces.meta():
        refuse_imported_without_model(sae_dir, "explain-text")
    model = traces.model_config() if traces.meta() else ModelConfig(model=sae.config.model or "smollm2")
    indexed_layer = None
    if sae.config.layer is None and Path(db_path).is_file():
        with FeatureDB(db_path) as db:
            indexed_layer = db.meta().get("layer")
    loaded = load_model(model)
    check_same_model(sae, loaded.config.model, loaded.fingerprint, "the run's model", allow_other_model)
    return explain_text(loaded, sae, text, top=top, layer=indexed_layer)
