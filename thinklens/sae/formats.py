"""SAE files at the border: the SAELens layout (our own format too) and the public R1 `.pt` files.

SAELens layout: `cfg.json` + `sae_weights.safetensors` with `W_enc` (d_in, d_sae), `W_dec`
(d_sae, d_in), `b_enc`, `b_dec` and, for BatchTopK (written as SAELens's `jumprelu`), a per-feature
`threshold`. SAELens 6's own loader opens every architecture we write (`make check-saelens`). The input scale is
folded into the weights (exactly: it is a power of two), so any SAELens-layout reader computes the
same function. thinklens' own facts (tied weights, k, the scale, the layer's name, provenance) sit
in a `thinklens` block of cfg.json that other readers ignore.

R1 release (DeepSeek-R1 SAEs): a torch state dict {W (d_in, d_sae), b_enc, b_dec}, tied, BatchTopK.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from thinklens.errors import ThinklensError
from thinklens.files import atomic_path
from thinklens.sae.sae import Sae, SaeConfig

SAE_FORMAT_VERSION = 1
CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
# At inference a BatchTopK SAE with its learnt threshold *is* a JumpReLU SAE (active where the
# pre-activation exceeds the threshold, value ReLU(pre)): SAELens opens it as one and computes our codes.
_SAELENS_ARCH = {"batchtopk_tied": "jumprelu", "batchtopk": "jumprelu", "topk": "topk", "relu": "standard"}


def save_sae(sae: Sae, directory: Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write `sae` in the SAELens layout (weights first, then cfg.json, each atomically)."""
    config = sae.config
    scale = config.input_scale
    with torch.no_grad():
        tensors = {
            "W_enc": (sae.encoder_weight * scale).T.contiguous(),  # (d_in, d_sae)
            "W_dec": (sae.W_dec / scale).contiguous(),  # (d_sae, d_in)
            "b_enc": sae.b_enc.detach().clone(),
            "b_dec": (sae.b_dec / scale).contiguous(),
        }
        if config.arch in ("batchtopk", "batchtopk_tied"):
            tensors["threshold"] = sae.threshold.expand(config.d_sae).clone()
        tensors = {name: tensor.cpu() for name, tensor in tensors.items()}  # an SAE on the GPU saves the same file
    directory = Path(directory)
    with atomic_path(directory / WEIGHTS_FILE) as temp:
        save_file(tensors, str(temp))
    cfg = {
        "architecture": _SAELENS_ARCH[config.arch],
        "d_in": config.d_in,
        "d_sae": config.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "model_name": config.model,
        "hook_name": None if config.layer is None else f"blocks.{config.layer}.hook_resid_post",
        "hook_layer": config.layer,
        "hook_head_index": None,
        "activation_fn": "topk" if config.arch == "topk" else "relu",  # SAELens reads topk + k as its TopK class
        "activation_fn_kwargs": {"k": config.k} if config.arch == "topk" else {},
        "k": config.k,  # SAELens's BatchTopK configs read it here; its JumpReLU ignores it
        "apply_b_dec_to_input": config.centred_encoder,
        "finetuning_scaling_factor": False,
        "normalize_activations": "none",
        "prepend_bos": True,
        "neuronpedia_id": None,
        "thinklens": {
            "format_version": SAE_FORMAT_VERSION,
            **config.model_dump(mode="json"),
            "hook_name": config.hook_name,
            **(metadata or {}),
        },
    }
    with atomic_path(directory / CFG_FILE) as temp:
        temp.write_text(json.dumps(cfg, indent=2) + "\n")
    return directory


def load_sae(directory: Path) -> Sae:
    """Load an SAE saved by thinklens, or any SAELens-layout SAE (topk, batchtopk, standard)."""
    directory = Path(directory)
    cfg_path, weights_path = directory / CFG_FILE, directory / WEIGHTS_FILE
    if not cfg_path.is_file() or not weights_path.is_file():
        raise ThinklensError(f"no SAE in {directory}: expected {CFG_FILE} and {WEIGHTS_FILE} (run `thinklens train`)")
    try:
        cfg = json.loads(cfg_path.read_text())
        tensors = load_file(str(weights_path))
    except (json.JSONDecodeError, OSError, RuntimeError, SafetensorError) as exc:
        raise ThinklensError(f"the SAE files in {directory} are corrupt ({exc}): re-train or re-download them") from None
    if not isinstance(cfg, dict):
        raise ThinklensError(f"{cfg_path} is not a JSON object: re-train or re-download the SAE")
    try:
        return _sae_from(cfg, tensors, directory)
    except KeyError as exc:
        raise ThinklensError(f"the SAE in {directory} lacks {exc.args[0]!r} (in {CFG_FILE} or {WEIGHTS_FILE}): "
                             "re-train or re-download it") from None
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(part) for part in problem["loc"])
        raise ThinklensError(f"{cfg_path}: {where}: {problem['msg'].lower()}: fix the file or re-download the SAE"
                             ) from None
    except RuntimeError as exc:  # tensors of other shapes than cfg.json says
        raise ThinklensError(f"the weights in {weights_path} do not match {CFG_FILE} ({_first_line(exc)}): "
                             "re-train or re-download the SAE") from None


def _first_line(exc: Exception) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:160]


def _sae_from(cfg: dict[str, Any], tensors: dict[str, torch.Tensor], directory: Path) -> Sae:
    own = cfg.get("thinklens")
    if own is None:
        return from_saelens(cfg, tensors)
    if own.get("format_version", 0) > SAE_FORMAT_VERSION:
        raise ThinklensError(f"{directory} was written by a newer thinklens: upgrade thinklens to read it")
    fields = {key: own[key] for key in SaeConfig.model_fields if key in own}
    config = SaeConfig(**fields)
    sae = Sae(config)
    scale = config.input_scale
    with torch.no_grad():
        sae.W_dec.copy_(tensors["W_dec"] * scale)  # exact: the scale is a power of two
        if sae.W_enc is not None:
            sae.W_enc.copy_(tensors["W_enc"].T / scale)
        sae.b_enc.copy_(tensors["b_enc"])
        sae.b_dec.copy_(tensors["b_dec"] * scale)
        if "threshold" in tensors:
            sae.threshold.copy_(tensors["threshold"][0])
    return sae.eval()


def in_current_saelens_layout(directory: Path) -> bool:
    """Whether the SAE's cfg.json says what `save_sae` writes today (SAELens 6 reads a BatchTopK SAE as
    JumpReLU; cfg.json files written before that said 'batchtopk', which SAELens 6 opens as TopK and fails)."""
    cfg = json.loads((Path(directory) / CFG_FILE).read_text())
    arch = cfg.get("thinklens", {}).get("arch")
    return arch in _SAELENS_ARCH and cfg.get("architecture") == _SAELENS_ARCH[arch]


def resave_sae(source: Path, target: Path) -> Path:
    """`source`'s SAE written again by today's `save_sae` into `target`, its thinklens record kept."""
    from thinklens.sae.sae import SaeConfig

    record = {key: value for key, value in sae_metadata(source).items()
              if key not in SaeConfig.model_fields and key not in ("format_version", "hook_name")}
    return save_sae(load_sae(source), target, metadata=record)


def sae_metadata(directory: Path) -> dict[str, Any]:
    """The thinklens block of a saved SAE's cfg.json (empty for foreign SAEs)."""
    return json.loads((Path(directory) / CFG_FILE).read_text()).get("thinklens", {})


def refuse_imported_without_model(directory: Path, what: str) -> None:
    """For an SAE imported from a release (`thinklens import`) into a run with no traces of its model:
    refuse `what` (which runs the model) with the fix, instead of reaching for a model the run never had."""
    if not (Path(directory) / CFG_FILE).is_file():
        return
    metadata = sae_metadata(directory)
    imported = metadata.get("imported")
    if imported:
        model = metadata.get("model") or "its model"
        raise ThinklensError(f"this run was imported from the {imported.get('from', 'release')} without its model: "
                             f"{what} runs {model} itself; collect traces into the run on a machine that holds it "
                             f"(`thinklens collect --model {model} --out RUN`), then run {what} again")


class SaeCard(BaseModel):
    """What a saved SAE's cfg.json says, whichever layout wrote it: ours, or SAELens keys only."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    format_version: int = Field(default=0, description="thinklens' cfg.json version; 0: a foreign SAELens file.")
    config: SaeConfig = Field(description="Architecture, widths, k, model and layer.")
    training: dict[str, Any] | None = Field(default=None, description="The TrainConfig that trained it.")
    steps: int | None = Field(default=None, description="Training steps taken.")
    final: dict[str, float] | None = Field(default=None, description="The last training batch's loss, FVU, L0, dead.")
    dead_features: dict[str, Any] | None = Field(default=None, description="Dead over the training window.")


def read_sae_card(directory: Path) -> SaeCard:
    """The typed cfg.json of the SAE in `directory` (without loading its weights)."""
    path = Path(directory) / CFG_FILE
    if not path.is_file():
        raise ThinklensError(f"no SAE in {directory}: expected {CFG_FILE} (run `thinklens train`)")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ThinklensError(f"{path} is corrupt ({exc}): re-train or re-download the SAE") from exc
    own = cfg.get("thinklens")
    if own is None:
        return SaeCard(config=_saelens_config(cfg))
    config = SaeConfig(**{key: own[key] for key in SaeConfig.model_fields if key in own})
    return SaeCard.model_validate({**own, "config": config})


def _saelens_config(cfg: dict[str, Any]) -> SaeConfig:
    architecture = cfg.get("architecture", "standard")
    k = (cfg.get("activation_fn_kwargs") or {}).get("k") or cfg.get("k")
    arch = {"topk": "topk", "batchtopk": "batchtopk", "jumprelu": "batchtopk", "standard": "relu"}.get(architecture)
    if arch is None:
        raise ThinklensError(
            f"SAELens architecture '{architecture}' is not supported: use topk, batchtopk, jumprelu or standard")
    if arch != "relu" and k is None:
        raise ThinklensError(f"this SAELens {architecture} SAE names no k (activation_fn_kwargs.k or k): "
                             "thinklens needs it; add it to cfg.json")
    return SaeConfig(arch=arch, d_in=cfg["d_in"], d_sae=cfg["d_sae"], k=k, model=cfg.get("model_name"),
                     layer=cfg.get("hook_layer"), centred_encoder=bool(cfg.get("apply_b_dec_to_input")))


def from_saelens(cfg: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Sae:
    """An untied SAE from SAELens keys only (what any SAELens-layout file carries)."""
    sae = Sae(_saelens_config(cfg))
    with torch.no_grad():
        sae.W_enc.copy_(tensors["W_enc"].T)
        sae.W_dec.copy_(tensors["W_dec"])
        sae.b_enc.copy_(tensors["b_enc"])
        sae.b_dec.copy_(tensors["b_dec"])
        if "threshold" in tensors:
            threshold = tensors["threshold"].float()
            if not torch.all(threshold == threshold[0]):
                raise ThinklensError("this JumpReLU SAE has a threshold per feature; thinklens reads one shared "
                                     "threshold (BatchTopK's): per-feature thresholds are not supported yet")
            sae.threshold.copy_(threshold[0])
    return sae.eval()


def load_r1_pt(path: Path, k: int, model: str | None = None, layer: int | None = None) -> Sae:
    """A public DeepSeek-R1 SAE file: {W (d_in, d_sae), b_enc, b_dec}, tied BatchTopK (math k=128, logic k=64)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise ThinklensError(f"cannot read {path} as a torch state dict ({exc}): check the file") from exc
    missing = {"W", "b_enc", "b_dec"} - set(state)
    if missing:
        raise ThinklensError(f"{path} lacks {sorted(missing)}: an R1 SAE file holds W, b_enc and b_dec")
    d_in, d_sae = state["W"].shape
    sae = Sae(SaeConfig(arch="batchtopk_tied", d_in=d_in, d_sae=d_sae, k=k, model=model, layer=layer))
    with torch.no_grad():
        sae.W_dec.copy_(state["W"].float().T)
        sae.b_enc.copy_(state["b_enc"].float())
        sae.b_dec.copy_(state["b_dec"].float())
    return sae.eval()


def check_width(sae: Sae, d_model: int, what: str) -> None:
    """Refuse an SAE whose input width does not match the model's width at the layer."""
    if sae.config.d_in != d_model:
        raise ThinklensError(
            f"the SAE reads vectors of width {sae.config.d_in} but {what} has width {d_model}: "
            "use an SAE trained on this model and layer"
        )


def check_same_model(sae: Sae, model: str | None, fingerprint: str | None, what: str, allowed: bool = False) -> None:
    """Refuse an SAE trained on another model than the one `what` comes from (both fingerprints known and
    different), unless the transfer is `allowed`."""
    theirs = sae.config.model_fingerprint
    if allowed or not theirs or not fingerprint or theirs == fingerprint:
        return
    raise ThinklensError(f"the SAE was trained on {sae.config.model} ({theirs[:12]}) but {what} come from {model} "
                         f"({fingerprint[:12]}): train an SAE on this run (`thinklens train RUN`), or pass "
                         "--allow-other-model to use it on purpose")
