"""The activation store: `RUN/activations/`, fixed-capacity shards that can be memory-mapped.

    manifest.json                         what was harvested, how, and which shards are complete
                                          (an `ActivationManifest`)
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
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from thinklens.errors import ThinklensError
from thinklens.files import atomic_path, check_inside_run, remove_stale_temps, write_json_atomic
from thinklens.models.loader import ModelConfig

STORE_FORMAT_VERSION = 1
MANIFEST = "manifest.json"
INDEX_DIR = "index"
MARKER_DIR = "_finished"  # one file per shard a distributed harvest finished; folded into the manifest at the end

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


def storage_itemsize(dtype: str) -> int:
    """Bytes per stored value of a storage dtype ('float32', 'float16', 'bfloat16')."""
    return np.dtype(_NUMPY_DTYPES[dtype]).itemsize


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


@dataclass
class KeptBatch:
    """One batch of a store read in order, without the rows training excludes."""

    rows: int  # rows of the store the batch covers, kept or not (for progress)
    x: torch.Tensor  # (kept, d_model) float32 activations of the kept rows
    index: dict[str, np.ndarray]  # the asked index columns, for the kept rows


class ActivationManifest(BaseModel):
    """`manifest.json`: what was harvested (layers, width, dtype, model), how, and which shards count."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())  # unknown keys are kept, not dropped

    format_version: int = Field(default=STORE_FORMAT_VERSION, description="Version of the store layout.")
    identity: dict[str, Any] = Field(
        default_factory=dict, description="What a resumed harvest must match: model, layers, dtype, ..., traces."
    )
    model: str | None = Field(default=None, description="The model harvested (hub id, or the spec given).")
    model_fingerprint: str | None = Field(default=None, description="Hash or revision of that model's weights.")
    revision: str | None = Field(default=None, description="Hub revision of the model.")
    layers: list[int] = Field(description="Harvested layers, ascending.")
    names: list[str] = Field(default_factory=list, description="Activation names, e.g. layers.15.resid_post.")
    d_model: int = Field(gt=0, description="Width of every stored row.")
    dtype: str = Field(description="Storage dtype: float32, float16 or bfloat16.")
    chat_format: str | None = Field(default=None, description="Reasoning format of the traces.")
    arguments: dict[str, Any] = Field(default_factory=dict, description="The HarvestConfig that ran.")
    shards: list[ShardInfo] = Field(default_factory=list, description="Completed shards, in order.")
    token_count: int = Field(default=0, ge=0, description="Rows in the completed shards.")
    complete: bool = Field(default=False, description="Every planned shard is written.")

    def add_shard(self, shard: ShardInfo) -> None:
        """Count a finished shard (the caller writes the manifest)."""
        self.shards.append(shard)
        self.token_count += shard.rows

    def traces_model_config(self, **overrides: Any) -> ModelConfig:
        """The ModelConfig of the model that wrote the harvested traces, with `overrides` (e.g. device) applied."""
        model = self.identity.get("traces", {}).get("model")
        if model is None:
            raise ThinklensError("these activations do not record the model of their traces: re-harvest them")
        return ModelConfig(**{**model, **overrides})


class ActivationStore:
    """Read access to a harvested store, and the primitives the harvester writes with.

    The manifest is read once per store object (and replaced when this object writes one).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._manifest: ActivationManifest | None = None

    # ------------------------------------------------------------------ manifest
    @property
    def manifest_path(self) -> Path:
        return self.directory / MANIFEST

    def exists(self) -> bool:
        return self._manifest is not None or self.manifest_path.is_file()

    def manifest(self) -> ActivationManifest:
        if self._manifest is None:
            self._manifest = self._read_manifest()
        return self._manifest

    def _read_manifest(self) -> ActivationManifest:
        if not self.manifest_path.is_file():
            raise ThinklensError(
                f"no activation store in {self.directory}: run `thinklens harvest {self.directory.parent} --layer L` first"
            )
        try:
            raw = json.loads(self.manifest_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ThinklensError(f"{self.manifest_path} is corrupt ({exc}): {self._fix}") from exc
        if not isinstance(raw, dict):
            raise ThinklensError(f"{self.manifest_path} is corrupt (not a JSON object): {self._fix}")
        if raw.get("format_version", 0) > STORE_FORMAT_VERSION:
            raise ThinklensError(f"{self.directory} was written by a newer thinklens: upgrade thinklens to read it")
        try:
            return ActivationManifest.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise ThinklensError(f"{self.manifest_path} is corrupt ({where}: {first['msg']}): {self._fix}") from None

    @property
    def _fix(self) -> str:
        return f"remove {self.directory} and harvest again"

    def write_manifest(self, manifest: ActivationManifest) -> None:
        write_json_atomic(self.manifest_path, manifest.model_dump(mode="json"))
        self._manifest = manifest

    def model_config(self, **overrides: Any) -> ModelConfig:
        """The ModelConfig of the model that wrote the harvested traces (as `TraceStore.model_config`)."""
        try:
            return self.manifest().traces_model_config(**overrides)
        except ThinklensError:
            raise ThinklensError(
                f"the activations in {self.directory} do not record the model of their traces: "
                f"harvest them again with `thinklens harvest`"
            ) from None

    @property
    def layers(self) -> list[int]:
        return list(self.manifest().layers)

    @property
    def d_model(self) -> int:
        return self.manifest().d_model

    @property
    def dtype(self) -> str:
        return self.manifest().dtype

    def shards(self) -> list[ShardInfo]:
        """Completed shards, in order."""
        return list(self.manifest().shards)

    def intact_shards(self) -> list[ShardInfo]:
        """The completed shards, in order, up to the first whose files are missing or short (a file deleted or
        truncated by hand): harvest redoes that one and those after it."""
        manifest = self.manifest()
        intact = []
        for shard in manifest.shards:
            if not self.shard_intact(shard, manifest.layers, manifest.d_model, manifest.dtype):
                break
            intact.append(shard)
        return intact

    def shard_intact(self, shard: ShardInfo, layers: list[int], width: int, dtype: str) -> bool:
        """Whether the shard's index part and every layer's file are there, each file of its full size."""
        expected = shard.rows * width * storage_itemsize(dtype)
        files = [self.shard_path(layer, shard.shard) for layer in layers]
        return self.index_path(shard.shard).is_file() and all(
            path.is_file() and path.stat().st_size == expected for path in files)

    # ------------------------------------------------------------------ markers (distributed harvest)
    def marker_path(self, shard: int) -> Path:
        return self.directory / MARKER_DIR / f"shard-{shard:05d}.json"

    def mark_finished(self, shard: ShardInfo) -> None:
        """Written by a worker after the shard's files: the shard counts once the manifest is assembled."""
        write_json_atomic(self.marker_path(shard.shard), asdict(shard))

    def marked_shards(self) -> dict[int, ShardInfo]:
        """The shards whose markers are readable (their files still need checking)."""
        marked = {}
        for path in sorted((self.directory / MARKER_DIR).glob("shard-*.json")):
            try:
                shard = ShardInfo(**json.loads(path.read_text()))
            except (ValueError, TypeError):
                continue  # a marker half-written cannot be: they are atomic; anything else is not ours
            marked[shard.shard] = shard
        return marked

    def clear_markers(self) -> None:
        directory = self.directory / MARKER_DIR
        check_inside_run(directory, follow=True)
        for path in directory.glob("*"):
            path.unlink()
        if directory.is_dir():
            directory.rmdir()

    @property
    def token_count(self) -> int:
        return sum(shard.rows for shard in self.shards())

    def is_complete(self) -> bool:
        return self.exists() and self.manifest().complete

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
            pq.write_table(index, temp, compression="zstd", write_page_checksum=True)

    def remove_stale_temps(self) -> None:
        for directory in [self.directory, self.directory / INDEX_DIR, self.directory / MARKER_DIR,
                          *self.directory.glob("layers.*")]:
            remove_stale_temps(directory)

    # ------------------------------------------------------------------ reading
    def open_shard(self, layer: int, shard: ShardInfo) -> np.memmap:
        """Memory-map one shard of `layer` as a (rows, d_model) array in its storage dtype."""
        if layer not in self.layers:
            raise ThinklensError(f"layer {layer} was not harvested into {self.directory}: it holds layers {self.layers}")
        path = self.shard_path(layer, shard.shard)
        if not path.is_file() or path.stat().st_size != shard.rows * self.d_model * storage_itemsize(self.dtype):
            raise ThinklensError(f"{path} is missing or truncated: run `thinklens harvest {self.directory.parent}` to "
                                 "harvest that shard again")
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
        return pq.read_table(self.index_path(shard.shard), columns=columns, page_checksum_verification=True)

    def kept_batches(self, layer: int, batch_size: int, columns: tuple[str, ...] = (),
                     include_special: bool = False, include_massive: bool = False) -> Iterator[KeptBatch]:
        """Every shard in order, in batches of `batch_size` rows, with special and massive tokens dropped
        (as training drops them) unless included; each with the asked index columns of its kept rows.
        `next_token_id` is a column too: the token that follows in the same sequence and shard (-1 at the end)."""
        stored = {*columns} - {NEXT_TOKEN} | ({"token_id", "sequence_id"} if NEXT_TOKEN in columns else set())
        for shard in self.shards():
            index = self.read_index(shard, sorted({*stored, "special", "massive"})).to_pydict()
            if NEXT_TOKEN in columns:
                index[NEXT_TOKEN] = _next_tokens(np.asarray(index["token_id"]), np.asarray(index["sequence_id"]))
            keep = np.ones(shard.rows, dtype=bool)
            if not include_special:
                keep &= ~np.asarray(index["special"], dtype=bool)
            if not include_massive:
                keep &= ~np.asarray(index["massive"], dtype=bool)
            arrays = {name: np.asarray(index[name]) for name in columns}
            for start in range(0, shard.rows, batch_size):
                stop = min(start + batch_size, shard.rows)
                rows = np.flatnonzero(keep[start:stop])
                x = (self.read_rows(layer, shard, slice(start, stop)).float()[torch.from_numpy(rows)] if len(rows)
                     else torch.empty(0, self.d_model))
                yield KeptBatch(stop - start, x, {name: array[start:stop][rows] for name, array in arrays.items()})

    def index(self, columns: list[str] | None = None) -> pa.Table:
        """The token index of all completed shards."""
        return pa.concat_tables([self.read_index(shard, columns) for shard in self.shards()])


NEXT_TOKEN = "next_token_id"


def _next_tokens(token_ids: np.ndarray, sequence_ids: np.ndarray) -> np.ndarray:
    """Each row's following token within its sequence; -1 where the sequence (or the shard) ends."""
    following = np.full(len(token_ids), -1, dtype=np.int64)
    same = sequence_ids[1:] == sequence_ids[:-1]
    following[:-1][same] = token_ids[1:][same]
    return following
