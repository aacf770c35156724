"""Assemble a `Variant` and the prompt set from a run's artifacts (traces, SAE, feature database)."""

from __future__ import annotations

from pathlib import Path

from thinklens.data.loaders import load_prompts
from thinklens.data.records import PromptRecord
from thinklens.data.segments import PrefixConfig
from thinklens.data.traces import TraceStore
from thinklens.errors import ThinklensError
from thinklens.features.db import FeatureDB
from thinklens.models.formats import make_format
from thinklens.models.loader import load_model
from thinklens.sae.formats import load_sae, refuse_imported_without_model
from thinklens.steering.variant import Variant, typical_max_activations


def open_variant(traces_dir: Path, sae_dir: Path, db_path: Path, features: list[int], device: str = "auto") -> Variant:
    """The run's model, SAE, reasoning format and prefix pattern, with the features' typical maxima.

    The model and the SAE go on `device`; steering acts on the SAE's layer (or, for an SAE that names
    none, the layer the feature database was indexed on).
    """
    store = TraceStore(traces_dir)
    meta = store.meta()
    if meta is None:
        refuse_imported_without_model(sae_dir, "steering")
        raise ThinklensError(f"no traces in {traces_dir}: run `thinklens collect` first")
    identity = meta["identity"]
    sae = load_sae(sae_dir)
    unknown = [f for f in features if not 0 <= f < sae.config.d_sae]
    if unknown:
        raise ThinklensError(f"feature {unknown[0]} does not exist: the SAE in {sae_dir} has features "
                             f"0..{sae.config.d_sae - 1}")
    loaded = load_model(store.model_config(device=device))
    sae = sae.to(loaded.device)
    format_name = store.read(["format"]).column(0)[0].as_py()
    fmt = make_format(format_name, forced_opening=identity.get("forced_opening"))
    db = FeatureDB(db_path)
    typical = typical_max_activations(db, features)
    indexed_layer = db.meta().get("layer")  # the layer whose activations gave the typical maxima
    return Variant(loaded, sae, typical_max=typical, fmt=fmt, prefix=PrefixConfig(**identity["prefix"]),
                   layer=indexed_layer)


def run_prompts(traces_dir: Path, limit: int) -> list[PromptRecord]:
    """The first `limit` prompts of the set the run was collected on."""
    identity = TraceStore(traces_dir).meta()["identity"]
    return load_prompts(identity["prompts"], limit=limit, seed=identity.get("prompt_seed", 0), split=identity.get("split", "train"))
