"""Fine-tune a base model on teacher traces and write a Hugging Face model directory.

Full fine-tuning, loss on the completion only, AdamW with warmup and cosine decay, matmuls in
bfloat16 under autocast where the hardware has it (weights and optimiser state stay float32).
The data order is fixed by the seed; a checkpoint (weights, optimiser, step, log) is saved every
`checkpoint_seconds` next to the output, so a killed run resumes and ends with the same weights as
an uninterrupted one. The output directory appears only when it is complete (one rename).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict

from thinklens.distill.dataset import TraceSet, batch_plan, build_examples, collate
from thinklens.distill.recipe import DistillConfig
from thinklens.distill.template import r1_chat_template
from thinklens.errors import ThinklensError
from thinklens.files import write_json_atomic
from thinklens.models.loader import LoadedModel, ModelConfig, load_model, resolve_device
from thinklens.progress import progress_bar

RECORD = "distill.json"  # in the output directory: the recipe and what training measured
LOG = "training_log.jsonl"


class DistillRecord(BaseModel):
    """What `distill.json` holds: the recipe that made the model, and its training figures."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    recipe: dict[str, Any]
    recipe_hash: str
    base_fingerprint: str
    examples: int
    held_out_dropped: int
    too_long_dropped: int
    steps: int
    trained_tokens: int
    seconds: float
    first_loss: float
    final_loss: float
    precision: str
    wall_seconds: float | None = None  # the whole call: loading, teacher, training, saving


@dataclass(frozen=True)
class DistillResult:
    """What one `distill` call did."""

    directory: Path
    record: DistillRecord
    made: bool  # False when the directory was already complete for this recipe

    @property
    def tokens_per_second(self) -> float:
        return self.record.trained_tokens / self.record.seconds if self.record.seconds > 0 else 0.0


def read_record(directory: Path) -> DistillRecord | None:
    """The record of a complete distilled model directory, or None."""
    path = Path(directory) / RECORD
    if not path.is_file() or not (Path(directory) / "config.json").is_file():
        return None
    return DistillRecord.model_validate_json(path.read_text())


def distill(config: DistillConfig, out: Path, show_progress: bool = True) -> DistillResult:
    """Make (or find already made) the model `config` describes in `out`."""
    started = time.perf_counter()
    out = Path(out)
    existing = read_record(out) if out.exists() else None
    if existing is not None and existing.recipe_hash == config.recipe_hash():
        return DistillResult(out, existing, made=False)
    if out.exists() and (existing is not None or any(out.iterdir())):
        raise ThinklensError(f"{out} already holds {'another recipe' if existing else 'other files'}: "
                             "choose a new --out or remove it")
    device = resolve_device(config.base.device)
    loaded = load_model(ModelConfig(**{**config.base.model_dump(), "dtype": "float32"}))
    tokenizer = loaded.tokenizer
    tokenizer.chat_template = r1_chat_template(tokenizer)
    trace_set = build_examples(config, tokenizer)
    if not trace_set.examples:
        raise ThinklensError(f"every teacher trace is longer than max_length {config.max_length}: raise --max-length")
    record = _train(config, loaded, trace_set, _partial_dir(out), device, show_progress)
    _publish(loaded, tokenizer, record, out, started)
    return DistillResult(out, record, made=True)


def _partial_dir(out: Path) -> Path:
    return out.with_name(f".{out.name}.partial")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision` on `device`, or None for plain float32."""
    if precision == "float32":
        return None
    if precision == "bfloat16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if device.type == "cpu" and torch.cpu._is_avx512_bf16_supported() else None


def _learning_rate(config: DistillConfig, step: int, total: int) -> float:
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, total - config.warmup_steps)
    return config.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _train(
    config: DistillConfig, loaded: LoadedModel, trace_set: TraceSet, partial: Path,
    device: torch.device, show_progress: bool,
) -> DistillRecord:
    examples, model = trace_set.examples, loaded.model
    model.train()
    torch.manual_seed(config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, betas=(0.9, 0.95),
                                  weight_decay=config.weight_decay, fused=True)  # one kernel: 2.5x faster steps on CPU
    plan = batch_plan(len(examples), [len(e.token_ids) for e in examples], config)
    state = _resume(partial, model, optimizer, config)
    dtype = autocast_dtype(config.precision, device)
    pad_id = loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else 0
    last_save = time.monotonic()
    with progress_bar("distill", total=len(plan), enabled=show_progress) as bar:
        bar.advance(state["step"])
        for step in range(state["step"], len(plan)):
            started = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = _learning_rate(config, step, len(plan))
            ids, attention, targets = collate([examples[i] for i in plan[step]], pad_id)
            loss = completion_loss(model, ids.to(device), attention.to(device), targets.to(device), dtype)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            tokens = int(attention.sum())
            state["log"].append({"step": step, "loss": round(loss.item(), 6), "tokens": tokens,
                                 "lr": optimizer.param_groups[0]["lr"]})
            state.update(step=step + 1, seconds=state["seconds"] + time.perf_counter() - started)
            bar.advance(1, tokens=tokens, status=f"loss {loss.item():.3f}")
            if time.monotonic() - last_save >= config.checkpoint_seconds or step + 1 == len(plan):
                _save_checkpoint(partial, model, optimizer, state)
                last_save = time.monotonic()
    log = state["log"]
    return DistillRecord(
        recipe=config.recipe(), recipe_hash=config.recipe_hash(), base_fingerprint=loaded.fingerprint,
        examples=len(examples), held_out_dropped=trace_set.held_out, too_long_dropped=trace_set.too_long, steps=len(plan),
        trained_tokens=sum(line["tokens"] for line in log), seconds=round(state["seconds"], 2),
        first_loss=log[0]["loss"], final_loss=sum(line["loss"] for line in log[-10:]) / len(log[-10:]),
        precision=str(dtype).removeprefix("torch.") if dtype else "float32",
    )


def completion_loss(
    model: Any, ids: torch.Tensor, attention: torch.Tensor, targets: torch.Tensor, dtype: torch.dtype | None
) -> torch.Tensor:
    """Mean next-token cross-entropy over the completion, computing logits only where it is trained."""
    with torch.autocast(ids.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        hidden = model.base_model(input_ids=ids, attention_mask=attention).last_hidden_state
        logits = model.get_output_embeddings()(hidden[targets])
    logits = logits.float()
    softcap = getattr(model.config, "final_logit_softcapping", None)
    if softcap:  # Gemma's logits are squashed after the head
        logits = torch.tanh(logits / softcap) * softcap
    next_tokens = ids[:, 1:][targets[:, :-1]]
    return torch.nn.functional.cross_entropy(logits, next_tokens)


def _resume(partial: Path, model: Any, optimizer: torch.optim.Optimizer, config: DistillConfig) -> dict[str, Any]:
    """Load the last checkpoint of this recipe, if any; its log is cut to the checkpoint's step."""
    fresh = {"step": 0, "seconds": 0.0, "log": [], "recipe_hash": config.recipe_hash()}
    old = partial.with_name(partial.name + ".old")
    if not (partial / "state.json").is_file() and (old / "state.json").is_file():
        os.replace(old, partial)  # killed between the two renames of _save_checkpoint
    state_file = partial / "state.json"
    if not state_file.is_file():
        return fresh
    state = json.loads(state_file.read_text())
    if state.get("recipe_hash") != config.recipe_hash():
        shutil.rmtree(partial)  # a checkpoint of another recipe: its weights are no use to this one
        return fresh
    from safetensors.torch import load_model

    load_model(model, str(partial / "model.safetensors"))  # knows that tied weights are saved once
    optimizer.load_state_dict(torch.load(partial / "optimizer.pt", weights_only=True))
    lines = [json.loads(line) for line in (partial / LOG).read_text().splitlines() if line.strip()]
    state["log"] = [line for line in lines if line["step"] < state["step"]]
    return state


def _save_checkpoint(partial: Path, model: Any, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Write the checkpoint beside the current one, then switch to it with renames: a kill at any
    point leaves either the old checkpoint or the new one, never a mix."""
    from safetensors.torch import save_model

    partial.parent.mkdir(parents=True, exist_ok=True)
    staging = partial.with_name(partial.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    save_model(model, str(staging / "model.safetensors"))
    torch.save(optimizer.state_dict(), staging / "optimizer.pt")
    (staging / LOG).write_text("".join(json.dumps(line) + "\n" for line in state["log"]))
    meta = {key: value for key, value in state.items() if key != "log"}
    write_json_atomic(staging / "state.json", meta)
    old = partial.with_name(partial.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if partial.exists():
        os.replace(partial, old)
    os.replace(staging, partial)
    shutil.rmtree(old, ignore_errors=True)


def _publish(loaded: LoadedModel, tokenizer: Any, record: DistillRecord, out: Path, started: float) -> None:
    """Save the model, tokenizer (with the r1 template) and record; appear at `out` in one rename."""
    partial = _partial_dir(out)
    staging = out.with_name(f".{out.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    loaded.model.eval()
    loaded.model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    shutil.copyfile(partial / LOG, staging / LOG)
    wall = round(time.perf_counter() - started, 1)
    write_json_atomic(staging / RECORD, record.model_copy(update={"wall_seconds": wall}).model_dump(mode="json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        out.rmdir()  # an empty directory the user made for it
    os.replace(staging, out)
    shutil.rmtree(partial, ignore_errors=True)
