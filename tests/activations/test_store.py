"""The typed manifest: today's manifest.json files load, it is read once, refreshed on write, and names the model."""

from __future__ import annotations

import json

import pytest

from tests.activations.synthetic import write_synthetic_store
from thinklens.activations.store import ActivationManifest, ActivationStore, ShardInfo
from thinklens.errors import ThinklensError
from thinklens.models.loader import ModelConfig

# A manifest.json exactly as `harvest` wrote it before the manifest was typed (format version 1).
TODAYS_MANIFEST = {
    "arguments": {"batch_tokens": 8192, "dtype": "auto", "layers": [15], "massive_ratio": 5.0, "model": None,
                  "shard_tokens": 32768},
    "chat_format": "r1",
    "complete": True,
    "d_model": 576,
    "dtype": "float32",
    "format_version": 1,
    "identity": {
        "dtype": "auto", "layers": [15], "massive_ratio": 5.0, "model": "smollm2", "revision": None,
        "shard_tokens": 32768,
        "traces": {"model": {"device": "auto", "device_map": None, "dtype": "auto", "model": "smollm2",
                             "revision": None, "trust_remote_code": False},
                   "prompts": "arithmetic"},
    },
    "layers": [15],
    "model": "smollm2",
    "model_fingerprint": "9f3c",
    "names": ["layers.15.resid_post"],
    "revision": None,
    "shards": [{"first_row": 0, "first_sequence": 0, "last_sequence": 11, "rows": 3000, "shard": 0},
               {"first_row": 3000, "first_sequence": 12, "last_sequence": 20, "rows": 2500, "shard": 1}],
    "token_count": 5500,
}


def test_a_manifest_in_todays_format_loads(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps(TODAYS_MANIFEST, indent=2))
    store = ActivationStore(tmp_path)
    manifest = store.manifest()
    assert isinstance(manifest, ActivationManifest)
    assert (store.layers, store.d_model, store.dtype, store.token_count) == ([15], 576, "float32", 5500)
    assert store.shards() == [ShardInfo(0, 0, 3000, 0, 11), ShardInfo(1, 3000, 2500, 12, 20)]
    assert store.is_complete() and manifest.chat_format == "r1" and manifest.model_fingerprint == "9f3c"
    assert store.model_config(device="cpu") == ModelConfig(model="smollm2", device="cpu")
    # Written back, it is the same document.
    store.write_manifest(manifest)
    assert json.loads((tmp_path / "manifest.json").read_text()) == TODAYS_MANIFEST


def test_the_manifest_is_read_once_and_refreshed_on_write(tmp_path):
    store = write_synthetic_store(tmp_path, n_sequences=4, tokens_per_sequence=8, d_model=4, shard_tokens=16)
    reader = ActivationStore(tmp_path)
    assert reader.token_count == 32
    (tmp_path / "manifest.json").write_text("{}")  # changed behind its back: this object keeps what it read
    assert reader.token_count == 32 and reader.layers == [0]
    updated = store.manifest().model_copy(update={"complete": False})
    store.write_manifest(updated)
    assert store.manifest() is updated and not store.is_complete()
    assert not ActivationStore(tmp_path).is_complete()  # a new object reads the new file


def test_newer_corrupt_and_modelless_manifests_name_the_fix(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({**TODAYS_MANIFEST, "format_version": 99}))
    with pytest.raises(ThinklensError, match="written by a newer thinklens: upgrade thinklens"):
        ActivationStore(tmp_path).manifest()
    (tmp_path / "manifest.json").write_text(json.dumps({**TODAYS_MANIFEST, "d_model": "wide"}))
    with pytest.raises(ThinklensError, match=r"manifest.json is corrupt \(d_model: .*\): remove .* and harvest again"):
        ActivationStore(tmp_path).manifest()
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ThinklensError, match="is corrupt"):
        ActivationStore(tmp_path).manifest()
    (tmp_path / "manifest.json").write_text(json.dumps({**TODAYS_MANIFEST, "identity": {}}))
    with pytest.raises(ThinklensError, match="do not record the model of their traces: harvest them again"):
        ActivationStore(tmp_path).model_config()
    with pytest.raises(ThinklensError, match="run `thinklens harvest"):
        ActivationStore(tmp_path / "missing").manifest()
