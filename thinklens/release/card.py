"""The texts `publish` writes: the model card, the dataset card and the SAELens `pretrained_saes.yaml` entry.

Every number comes from the run's own records (each SAE's cfg.json, sae/eval.json, findings.json,
run.yaml); a record the run lacks is said to be missing, never filled in.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
TAGS = ["sparse-autoencoder", "interpretability", "reasoning", "saelens", "thinklens"]


def _envelope(path: Path) -> Any:
    return json.loads(path.read_text())["result"] if path.is_file() else None


def _hub_ids(value: str | None) -> list[str]:
    return [part for part in (value or "").split("+") if _HUB_ID.match(part) and not Path(part).exists()]


def _run_config(run: Any) -> dict[str, Any]:
    return run.record().config or {}


def model_card(run: Any, saes: dict[str, Path], facts: dict[str, Any]) -> str:
    """README.md of the published repository: the hub's YAML header, then what the SAEs are and how good."""
    from thinklens.sae.formats import sae_metadata

    own = sae_metadata(run.sae)
    config = _run_config(run)
    model = own.get("model") or "?"
    header: dict[str, Any] = {"library_name": "saelens", "tags": TAGS}
    if _hub_ids(model):
        header["base_model"] = model
    datasets = _hub_ids((config.get("collect") or {}).get("prompts")) + ([facts["traces_repo"]] if facts.get(
        "traces_repo") else [])
    if datasets:
        header["datasets"] = datasets
    lines = ["---", yaml.safe_dump(header, sort_keys=False).strip(), "---", "",
             f"# {facts['name']}: sparse autoencoders of {model}", "",
             f"Trained and packaged with thinklens (`thinklens publish {run.root}`). {len(saes)} SAE(s), a feature "
             f"database of their max-activating examples ({facts['labels']:,} features with a label) in Goodfire's R1 "
             f"release layout and thinklens' own, and {facts['traces']:,} reasoning traces.", ""]
    lines += _sae_table(saes) + _eval_tables(run) + _training_table(own) + _findings_table(run)
    if facts.get("traces_repo"):
        lines += [f"The traces are the dataset [`{facts['traces_repo']}`](https://huggingface.co/datasets/"
                  f"{facts['traces_repo']}) (`traces/` of the published folder).", ""]
    if facts["has_map"]:
        lines += ["## Feature map", "", "![feature map](map.png)", ""]
    lines += _usage(facts["name"], saes)
    return "\n".join(lines) + "\n"


def _sae_table(saes: dict[str, Path]) -> list[str]:
    from thinklens.sae.formats import sae_metadata

    rows = ["## SAEs", "", "| folder | architecture | d_in → d_sae | k | layer | final training FVU | L0 | dead |",
            "|---|---|---|---|---|---|---|---|"]
    for hook, directory in saes.items():
        meta = sae_metadata(directory)
        final = meta.get("final", {})
        rows.append(f"| `{hook}/` | {meta.get('arch', '?')} | {meta.get('d_in', '?')} → {meta.get('d_sae', '?')} | "
                    f"{meta.get('k') or '—'} | {meta.get('layer', '?')} | {_num(final.get('fvu'))} | "
                    f"{_num(final.get('l0'), 1)} | {_pct(final.get('dead_fraction'))} |")
    return rows + [""]


def _eval_tables(run: Any) -> list[str]:
    evaluation = _envelope(run.eval_json)
    if evaluation is None:
        return ["## Evaluation", "", f"Not evaluated (`thinklens eval {run.root}` writes it).", ""]
    overall, lm = evaluation.get("overall", {}), evaluation.get("lm", {})
    rows = ["## Evaluation (held-out traces)", "", "| | FVU | L0 | dead | dense | tokens |", "|---|---|---|---|---|---|",
            f"| all | {_num(overall.get('fvu'))} | {_num(overall.get('l0'), 1)} | {_pct(overall.get('dead_fraction'))} | "
            f"{_pct(overall.get('dense_fraction'))} | {overall.get('tokens', '?')} |"]
    for segment, values in (evaluation.get("segments") or {}).items():
        rows.append(f"| {segment} | {_num(values.get('fvu'))} | {_num(values.get('l0'), 1)} | "
                    f"{_pct(values.get('dead_fraction'))} | {_pct(values.get('dense_fraction'))} | "
                    f"{values.get('tokens', '?')} |")
    if lm:
        rows += ["", f"Loss recovered with the SAE spliced in: **{_pct(lm.get('loss_recovered'))}** (LM loss clean "
                     f"{_num(lm.get('clean'))}, spliced {_num(lm.get('spliced'))}, zero-ablated "
                     f"{_num(lm.get('zero_ablated'))}, on {int(lm.get('tokens') or 0):,} tokens)."]
    return rows + [""]


def _training_table(own: dict[str, Any]) -> list[str]:
    training = own.get("training", {})
    keep = ("arch", "expansion", "k", "batch_size", "lr", "epochs", "tokens", "aux_k", "aux_coefficient",
            "dead_after_tokens", "seed")
    rows = ["## Training", "", "| setting | value |", "|---|---|"]
    rows += [f"| {key} | {training[key]} |" for key in keep if key in training]
    rows.append(f"| steps | {own.get('steps', '?')} |")
    return rows + [""]


def _findings_table(run: Any) -> list[str]:
    findings = _envelope(run.findings_json)
    if not findings:
        return ["## Findings", "", f"Not run (`thinklens findings {run.root}`).", ""]
    rows = ["## Findings: the R1 study's claims on this model", "", "| claim | measured | value [95 % interval] | "
            "bar | verdict |", "|---|---|---|---|---|"]
    for finding in findings.get("findings", []):
        rows.append(f"| {finding['claim']}. {finding['title']} | {finding['metric']} | {finding['value']:.3g} "
                    f"[{finding['low']:.3g}, {finding['high']:.3g}] | {finding['bar']:.3g} | **{finding['verdict']}** |")
    return rows + [""]


def _usage(name: str, saes: dict[str, Path]) -> list[str]:
    hook = next(iter(saes))
    return ["## Use", "", "```python",
            "from thinklens.sae.formats import load_sae",
            f"sae = load_sae('{hook}')  # or SAELens: SAE.load_from_disk('{hook}')", "```", "",
            f"The feature database in Goodfire's layout: `features/{name}.ddb` (tokens, activations) with "
            "`features/autointerp.db` (labels): open the autointerp file with DuckDB, `ATTACH` the .ddb as `ds` "
            "and join, as the R1 release's notebook does. `thinklens serve --ddb features/"
            f"{name}.ddb --autointerp features/autointerp.db` browses it. `manifest.json` lists every file's SHA-256.",
            ""]


def pretrained_saes_entry(name: str, repo_id: str | None, run: Any, saes: dict[str, Path]) -> str:
    """The block SAELens's `pretrained_saes.yaml` takes for this release (one `saes` item per folder)."""
    from thinklens.sae.formats import sae_metadata

    own = sae_metadata(run.sae)
    entry = {name: {"repo_id": repo_id or f"<your-hub-id>/{name}", "model": own.get("model"),
                    "conversion_func": None,
                    "saes": [{"id": hook, "path": hook, "l0": _round(sae_metadata(directory).get("final", {}).get("l0"))}
                             for hook, directory in saes.items()]}}
    return "# Paste into SAELens's pretrained_saes.yaml (fill in repo_id if not pushed with --push).\n" + \
        yaml.safe_dump(entry, sort_keys=False)


def dataset_card(run: Any, name: str, traces: int) -> str:
    """traces/README.md: the dataset card of the traces (the hub reads its YAML header's data files)."""
    collect = _run_config(run).get("collect") or {}
    header = {"configs": [{"config_name": "default", "data_files": [{"split": "train",
                                                                      "path": "data/train-*.parquet"}]}],
              "tags": ["reasoning", "chain-of-thought", "thinklens"]}
    return "\n".join(["---", yaml.safe_dump(header, sort_keys=False).strip(), "---", "",
                      f"# {name}: reasoning traces", "",
                      f"{traces:,} traces written by `{(collect.get('model') or {}).get('model', '?')}` on the prompt "
                      f"set `{collect.get('prompts', '?')}` with thinklens, each segmented into prompt, opening "
                      "prefix, thinking and answer (token offsets in the columns `generation_start`, `prefix_start`, "
                      "`prefix_end`, `thinking_end`). `token_ids` are the model's tokens; `text` their decoding.",
                      ""]) + "\n"


def _num(value: Any, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _pct(value: Any) -> str:
    return "—" if value is None else f"{100 * value:.1f} %"


def _round(value: Any) -> float | None:
    return None if value is None else round(float(value), 2)
