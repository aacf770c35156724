"""`smollm2-r1`: the default recipe's model, made once per machine into the cache and reused.

The cache holds one directory per recipe hash (`organisms/smollm2-r1-<hash>`), and the pointer
`organisms/smollm2-r1.json` names the current recipe's, which is what `--model smollm2-r1` loads.
A lock makes a second process that asks for it at the same time wait for the first's result.
"""

from __future__ import annotations

import fcntl
import json
import sys
from pathlib import Path

from thinklens.distill.recipe import DistillConfig
from thinklens.distill.train import DistillResult, distill, read_record
from thinklens.errors import ThinklensError
from thinklens.files import write_json_atomic
from thinklens.models.default import ORGANISM_NAME
from thinklens.models.loader import ModelConfig, organism_pointer


def organism_recipe(device: str = "auto") -> DistillConfig:
    """The recipe of `smollm2-r1`: the distill defaults on the embedded SmolLM2."""
    return DistillConfig(base=ModelConfig(model="smollm2", device=device))


def organism_dir(recipe: DistillConfig) -> Path:
    """Where the cache keeps the model a recipe makes."""
    return organism_pointer().parent / f"{ORGANISM_NAME}-{recipe.recipe_hash()[:16]}"


def ensure_organism(show_progress: bool = True, device: str = "auto") -> DistillResult:
    """`smollm2-r1`, made first (one line says so) when this recipe has no model in the cache yet."""
    recipe = organism_recipe(device)
    target = organism_dir(recipe)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f"{ORGANISM_NAME}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second process waits here, then finds it made
        record = read_record(target)
        if record is None or record.recipe_hash != recipe.recipe_hash():
            print(f"making {ORGANISM_NAME} (first use on this machine, ~10 min on 2 cores) into {target}",
                  file=sys.stderr, flush=True)
            result = distill(recipe, target, show_progress=show_progress)
        else:
            result = DistillResult(target, record, made=False)
        pointer = {"directory": target.name, "recipe_hash": recipe.recipe_hash()}
        if not organism_pointer().is_file() or json.loads(organism_pointer().read_text()) != pointer:
            write_json_atomic(organism_pointer(), pointer)
    return result


def distill_model(config: DistillConfig, out: Path | None, show_progress: bool = True) -> DistillResult:
    """`thinklens distill`: the model `config` makes, in `out`; without `out`, the cached `smollm2-r1`
    (which only its own recipe may be written to)."""
    if out is not None:
        return distill(config, out, show_progress=show_progress)
    if config.recipe_hash() != organism_recipe().recipe_hash():
        raise ThinklensError(f"this recipe is not {ORGANISM_NAME}'s, so it needs a place of its own: pass --out DIR")
    return ensure_organism(show_progress=show_progress, device=config.base.device)
