"""Shared fixtures: an isolated home and cache per test session, tiny models, the real SmolLM2."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.tiny import FAMILIES, build_tiny_model, build_tokenizer
from thinklens.activations.harvest import HarvestConfig, harvest
from thinklens.data.collect import CollectConfig, GenerationConfig, collect
from thinklens.features.build import IndexConfig, build_index
from thinklens.models.loader import ModelConfig
from thinklens.sae.train import TrainConfig, train

# Set before any test module imports `datasets` or `transformers`, which read these at import time:
# no network, and nothing written to the real home (HF caches and thinklens' cache live in tmp).
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="thinklens-tests-"))
atexit.register(shutil.rmtree, _SESSION_HOME, ignore_errors=True)
os.environ["HF_HOME"] = str(_SESSION_HOME / "hf")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# The GGUF de-quantisation cache is shared by the session's tests (it takes ~15 s to build).
os.environ["THINKLENS_CACHE"] = str(_SESSION_HOME / "thinklens-cache")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One saved random tiny model per family: {family: directory}."""
    root = tmp_path_factory.mktemp("tiny-models")
    return {family: build_tiny_model(family, root / family) for family in FAMILIES}


@pytest.fixture(scope="session")
def tokenizers(tmp_path_factory: pytest.TempPathFactory):
    """Tiny tokenizers with the R1, Qwen3 and ChatML templates: {name: tokenizer}."""
    root = tmp_path_factory.mktemp("tokenizers")
    return {name: build_tokenizer(root / name, name) for name in ("r1", "qwen3", "chatml")}


@pytest.fixture(scope="session")
def smollm2():
    """The real embedded default model, loaded once per session."""
    from thinklens.models.loader import ModelConfig, load_model

    return load_model(ModelConfig(model="smollm2", device="cpu"))


@pytest.fixture(scope="session")
def indexed_run(tiny_models, tmp_path_factory) -> Path:
    """A complete tiny run: traces → activations → SAE → features.db."""
    run = tmp_path_factory.mktemp("indexed-run")
    collect(
        CollectConfig(model=ModelConfig(model=str(tiny_models["llama"]), device="cpu"), prompts="arithmetic", limit=24,
                      generation=GenerationConfig(max_new_tokens=32, batch_size=12)),
        run / "traces", show_progress=False,
    )
    harvest(HarvestConfig(layers=(1,), shard_tokens=600), run / "traces", run / "activations", show_progress=False)
    train(TrainConfig(arch="topk", expansion=2, k=4, batch_size=128, min_steps=60), run / "activations", run / "sae",
          show_progress=False)
    build_index(IndexConfig(top=8, quantile_samples=4, batch_size=256), run / "sae", run / "activations",
                run / "traces", run / "features.db", show_progress=False)
    return run


@pytest.fixture
def one_build_second(monkeypatch):
    """A feature database records when its schema was applied (to the second); tests that compare two
    builds byte for byte build both within the same recorded second."""
    from datetime import UTC, datetime

    from thinklens.features import schema

    frozen = datetime(2026, 1, 1, tzinfo=UTC)

    class _Clock:
        @staticmethod
        def now(tz=None):
            return frozen

    monkeypatch.setattr(schema, "datetime", _Clock)
