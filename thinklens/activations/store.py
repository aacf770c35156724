"""The activation store: `RUN/activations/`, fixed-capacity shards that can be memory-mapped.

    manifest.json                         what was harvested, how, and which shards are complete
    index/part-00000.parquet              one row per token of shard 0 (see INDEX_SCHEMA)
    layers.15.resid_post/shard-00000.bin  shard 0 of layer 15: raw (rows, d_model) array, C order

Shards hold whole sequences, packed in sequence order up to `shard_tokens` rows, so the plan of
which sequence lands in which shard is fixed by the traces alone and a resumed harvest writes the
same bytes as an uninterrupted one. A shard counts only once the manifest lists it; its files are
written (atomically) before the manifest is updated (atomically).

bfloat16 has no NumPy dtype: it is stored as its raw 16 bits (uint16) and viewed back via torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from thinklens.errors import ThinklensError
from thinklens.files import atomic_path, remove_stale_temps, write_json_atomic

STORE_FORMAT_VERSION = 1
MANIFEST = "manifest.json"
INDEX_DIR = "index"

INDEX_SCHEMA = pa.schema(
    [
        ("row", pa.int64()),  # global row number in the store
        ("sequence_id", pa.int64()),
        ("token_idx", pa.int32()),
        ("token_id", pa.int32()),
        ("segment", pa.uint8()),  # 0 prompt, 1 prefix, 2 thinking, 3 answer
        ("special", pa.bool_()),  # special or chat-template token
        ("norm", pa.float32()),  # residual norm at the first harvested layer
        ("norm_ratio", pa.float32()),  # norm / median norm of its sequence
        ("massive", pa.bool_()),  # norm_ratio above the harvest's threshold
    ]
)

_NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}


def layer_dir_name(layer: int) -> str:
    return f"layers.{layer}.resid_post"


def to_storage(hidden: torch.Tensor, dtype: str) -> np.ndarray:
    """A (rows, d_model) tensor as the NumPy array the shard file holds."""
    if dtype == "bfloat16":
        return hidden.to(torch.bfloat16).cpu().view(torch.uint16).numpy()
    return hidden.to(getattr(torch, dtype)).cpu().numpy()


def from_storage(array: np.ndarray, dtype: str) -> torch.Tensor:
    """Inverse of `to_storage` (copies nothing for float32/float16)."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    return tensor.view(torch.bfloat16) if dtype == "bfloat16" else tensor


@dataclass(frozen=True)
class ShardInfo:
    shard: int
    first_row: int
    rows: int
    first_sequence: int
    last_sequence: int


class ActivationStore:
    """Read access to a harvested store, and the primitives the harvester writes with."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    # ------------------------------------------------------------------ manifest
    @property
    def manifest_path(self) -> Path:
        return self.directory / MANIFEST

    def exists(self) -> bool:
        return self.manifest_path.is_file()

    def manifest(self) -> dict[str, Any]:
        if not self.exists():
            raise ThinklensError(
                f"no activation store in {self.directory}: run `thinklens harvest {self.directory.parent} --layer L` first"
            )
        manifest = json.loads(self.manifest_path.read_text())
        if manifest.get("format_version", 0) > STORE_FORMAT_VERSION:
            raise ThinklensError(f"{self.directory} was written by a newer thinklens: upgrade thinklens to read it")
        return manifest

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        write_json_atomic(self.manifest_path, manifest)

    @property
    def layers(self) -> list[int]:
        return list(self.manifest()["layers"])

    @property
    def d_model(self) -> int:
        return int(self.manifest()["d_model"])

    @property
    def dtype(self) -> str:
        return str(self.manifest()["dtype"])

    def shards(self) -> list[ShardInfo]:
        """Completed shards, in order."""
        return [ShardInfo(**entry) for entry in self.manifest()["shards"]]

    @property
    def token_count(self) -> int:
        return sum(shard.rows for shard in self.shards())

    def is_complete(self) -> bool:
        return self.exists() and bool(self.manifest().get("complete"))

    # ------------------------------------------------------------------ files
    def shard_path(self, layer: int, shard: int) -> Path:
        return self.directory / layer_dir_name(layer) / f"shard-{shard:05d}.bin"

    def index_path(self, shard: int) -> Path:
        return self.directory / INDEX_DIR / f"part-{shard:05d}.parquet"

    def write_shard_files(self, shard: int, arrays: dict[int, np.ndarray], index: pa.Table) -> None:
        """Write one shard's activation files and its index part, each atomically."""
        for layer, array in arrays.items():
            with atomic_path(self.shard_path(layer, shard)) as temp:
                array.tofile(temp)
        with atomic_path(self.index_path(shard)) as temp:
            pq.write_table(index, temp, compression="zstd")

    def remove_stale_temps(self) -> None:
        for directory in [self.directory, self.directory / INDEX_DIR, *self.directory.glob("layers.*")]:
            remove_stale_temps(directory)

    # ------------------------------------------------------------------ reading
    def open_shard(self, layer: int, shard: ShardInfo) -> np.memmap:
        """Memory-map one shard of `layer` as a (rows, d_model) array in its storage dtype."""
        if layer not in self.layers:
            raise ThinklensError(f"layer {layer} was not harvested into {self.directory}: it holds layers {self.layers}")
        return np.memmap(
            self.shard_path(layer, shard.shard),
            dtype=_NUMPY_DTYPES[self.dtype],
            mode="r",
            shape=(shard.rows, self.d_model),
        )

    def read_rows(self, layer: int, shard: ShardInfo, rows: np.ndarray | slice) -> torch.Tensor:
        """Copy the given rows of a shard into a tensor; the mapping is dropped right after."""
        mapped = self.open_shard(layer, shard)
        try:
            return from_storage(np.array(mapped[rows]), self.dtype)
        finally:
            del mapped

    def read_index(self, shard: ShardInfo, columns: list[str] | None = None) -> pa.Table:
        return pq.read_table(self.index_path(shard.shard), columns=columns)

    def index(self, columns: list[str] | None = None) -> pa.Table:
        """The token index of all completed shards."""
        return pa.concat_tables([self.read_index(shard, columns) for shard in self.shards()])
