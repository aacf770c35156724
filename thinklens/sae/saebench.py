"""SAEBench's result files: `core` and `sparse_probing` evals in SAEBench's JSON layout.

The layout is SAEBench's `BaseEvalOutput` (eval_type_id, eval_config, eval_id,
datetime_epoch_millis, eval_result_metrics by category, eval_result_details, the SAE's cfg, and
the SAE Bench / SAELens provenance fields, null here: thinklens computed the numbers), so SAEBench's
graphing notebooks and leaderboards read thinklens's SAEs beside theirs. The definitions follow
SAEBench's core eval: explained variance = 1 − FVU, CE-loss score = (CE_zero − CE_SAE) /
(CE_zero − CE_clean), KL score = 1 − KL_SAE / KL_zero (KL of the next-token distributions against
the clean model's), L0, L1, fraction alive on the evaluated tokens.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from thinklens import __version__
from thinklens.sae.probing import ProbeResult


def _envelope(eval_type: str, eval_config: dict[str, Any], metrics: dict[str, Any], details: list[dict[str, Any]],
              sae_cfg: dict[str, Any]) -> dict[str, Any]:
    return {
        "eval_type_id": eval_type,
        "eval_config": eval_config,
        "eval_id": str(uuid.uuid4()),
        "datetime_epoch_millis": int(time.time() * 1000),
        "eval_result_metrics": metrics,
        "eval_result_details": details,
        "sae_bench_commit_hash": f"none: computed by thinklens {__version__}",
        "sae_lens_id": None,
        "sae_lens_release_id": None,
        "sae_lens_version": None,
        "sae_cfg_dict": sae_cfg,
        "eval_result_unstructured": None,
    }


def core_result(report: dict[str, Any], eval_config: dict[str, Any], sae_cfg: dict[str, Any]) -> dict[str, Any]:
    """SAEBench's core eval from an eval report (`EvalReport.as_dict()`)."""
    overall, lm, features = report["overall"], report.get("lm") or {}, report["features"]
    nan = float("nan")
    metrics = {
        "model_behavior_preservation": {
            "kl_div_score": lm.get("kl_div_score", nan),
            "kl_div_with_ablation": lm.get("kl_zero_ablated", nan),
            "kl_div_with_sae": lm.get("kl_spliced", nan),
        },
        "model_performance_preservation": {
            "ce_loss_score": lm.get("loss_recovered", nan),
            "ce_loss_with_ablation": lm.get("zero_ablated", nan),
            "ce_loss_with_sae": lm.get("spliced", nan),
            "ce_loss_without_sae": lm.get("clean", nan),
        },
        "reconstruction_quality": {
            "explained_variance": 1 - overall["fvu"],
            "mse": overall["mse"],
            "cossim": overall["cossim"],
        },
        "shrinkage": {
            "l2_norm_in": overall["l2_norm_in"],
            "l2_norm_out": overall["l2_norm_out"],
            "l2_ratio": overall["l2_ratio"],
            "relative_reconstruction_bias": overall["relative_reconstruction_bias"],
        },
        "sparsity": {"l0": overall["l0"], "l1": overall["l1"]},
        "token_stats": {
            "total_tokens_eval_reconstruction": int(lm.get("tokens", 0)),
            "total_tokens_eval_sparsity_variance": overall["tokens"],
        },
        "misc_metrics": features,
    }
    return _envelope("core", eval_config, metrics, [], sae_cfg)


def sparse_probing_result(results: list[ProbeResult], ks: tuple[int, ...], eval_config: dict[str, Any],
                          sae_cfg: dict[str, Any]) -> dict[str, Any]:
    """SAEBench's sparse_probing eval: accuracies averaged over tasks, and each task's in the details."""
    def mean(values: list[float]) -> float:
        return sum(values) / len(values) if values else float("nan")

    details = []
    for result in results:
        row: dict[str, Any] = {"dataset_name": result.task, "train_examples": result.train,
                               "test_examples": result.test, "llm_test_accuracy": result.llm_accuracy,
                               "sae_test_accuracy": result.sae_accuracy}
        row.update({f"sae_top_{k}_test_accuracy": result.top_k_accuracy[k] for k in ks})
        # Beyond SAEBench's fields: 95 % Wilson intervals, as the test splits here are small.
        row.update({f"{name}_ci95": [interval.low, interval.high] for name, interval in (
            ("llm_test_accuracy", result.interval(result.llm_accuracy)),
            ("sae_test_accuracy", result.interval(result.sae_accuracy)),
            *((f"sae_top_{k}_test_accuracy", result.interval(result.top_k_accuracy[k])) for k in ks))})
        details.append(row)
    metrics = {
        "llm": {"llm_test_accuracy": mean([r.llm_accuracy for r in results])},
        "sae": {"sae_test_accuracy": mean([r.sae_accuracy for r in results]),
                **{f"sae_top_{k}_test_accuracy": mean([r.top_k_accuracy[k] for r in results]) for k in ks}},
    }
    return _envelope("sparse_probing", eval_config, metrics, details, sae_cfg)
