"""`explain`: label features with an LLM and score each label on held-out examples, into features.db.

Per feature: the explainer sees the *shown* examples (activating tokens marked) with the feature's
segment rates and logit-lens tokens, and answers a label, a description and an interestingness. The
scorer (detection) sees the *held-out* activating examples mixed with as many non-activating ones,
unmarked, and gives each a probability that the feature fires; its balanced accuracy is the label's
`quality`. The control scores the same examples with *another* feature's label: a method whose real
labels do not beat the shuffled ones is not telling anything, and the result says so.

Each feature's label and scores are committed together, so a killed run resumes with the features it
had not finished; a label of another model is never replaced unless `force`.
"""

from __future__ import annotations

import json
import random
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from thinklens.errors import ThinklensError
from thinklens.features.autointerp.client import ChatClient, Usage
from thinklens.features.autointerp.examples import ExampleSource, FeatureExamples, Window
from thinklens.features.autointerp.replies import (
    Explanation,
    Scores,
    Unparsable,
    parse_explanation,
    parse_predictions,
    score_predictions,
)
from thinklens.features.db import open_read_only
from thinklens.features.labels import HEURISTIC_MODEL
from thinklens.features.schema import migrate
from thinklens.files import check_inside_run

PROMPTS = Path(__file__).parent / "prompts"
PROMPT_VERSION = "thinklens-explain-v1"  # explain-v1.txt + detect-v1.txt; a new template is a new version


class ExplainConfig(BaseModel):
    """Which endpoint explains and scores which features, with how many examples."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    base_url: str = Field(min_length=1, description="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1.")
    model: str = Field(min_length=1, description="Model that writes the labels.")
    scorer_model: str | None = Field(default=None, description="Model that scores them (default: the same).")
    api_key_env: str | None = Field(default="OPENAI_API_KEY", description="Environment variable holding the key.")
    features: tuple[int, ...] | None = Field(default=None, description="Features to explain (default: the most "
                                                                       "frequent live ones, up to --limit).")
    limit: int = Field(default=50, ge=1, description="Most features explained when --features is not given.")
    shown: int = Field(default=10, ge=1, le=64, description="Activating examples shown to the explainer.")
    held_out: int = Field(default=8, ge=2, le=64, description="Held-out activating examples scored (and as many "
                                                              "non-activating ones).")
    window: int = Field(default=16, ge=2, le=64, description="Tokens of context around each example.")
    concurrency: int = Field(default=4, ge=1, le=64, description="Requests in flight at once.")
    timeout_s: float = Field(default=60.0, gt=0, description="Timeout of one request.")
    max_retries: int = Field(default=4, ge=0, le=10, description="Retries on 429, 5xx and dropped connections.")
    max_tokens: int = Field(default=512, ge=1, description="Most tokens of one answer (a reasoning model thinks "
                                                           "before it answers).")
    force: bool = Field(default=False, description="Relabel features labelled before, by any model.")
    seed: int = Field(default=0, description="Seed of the negatives and the shuffled control.")


@dataclass
class FeatureOutcome:
    feature_id: int
    explanation: Explanation | None
    scores: dict[bool, tuple[Scores | None, str, str | None]] = field(default_factory=dict)  # control → …
    shown: list[Window] = field(default_factory=list)


@dataclass
class ExplainResult:
    explained: int
    skipped: int
    unparsable_labels: int
    real: list[float]  # detection balanced accuracy per scored feature
    shuffled: list[float]
    usage: Usage

    def summary(self) -> dict[str, object]:
        """Mean balanced accuracy of real and shuffled labels, with bootstrap 95 % intervals over features."""
        return {"real": _mean_interval(self.real), "shuffled": _mean_interval(self.shuffled),
                "separates": _separates(self.real, self.shuffled)}


def explain_prompt(examples: FeatureExamples, stats: str) -> str:
    blocks = "\n".join(f"{i + 1}. {window.text(marked=True)!r}" for i, window in enumerate(examples.shown))
    return (PROMPTS / "explain-v1.txt").read_text().format(values_note="", stats=stats, examples=blocks)


def detect_prompt(label: Explanation, windows: list[Window]) -> str:
    blocks = "\n".join(f"{i + 1}. {window.text()!r}" for i, window in enumerate(windows))
    return (PROMPTS / "detect-v1.txt").read_text().format(label=label.label, description=label.description,
                                                          examples=blocks, n=len(windows))


def explain_run(config: ExplainConfig, db_path: Path, source: ExampleSource, progress=None,
                dry_run: bool = False) -> ExplainResult | str:
    """Explain and score the chosen features of `db_path` (a dry run returns the first explainer prompt)."""
    reader = open_read_only(db_path)
    todo, skipped = _todo(reader, config)
    if dry_run:
        if not todo:
            raise ThinklensError("nothing to explain: every chosen feature is labelled (pass --force to redo)")
        return explain_prompt(source.examples(todo[0], config.shown, config.held_out), _stats(reader, todo[0]))
    explainer = ChatClient(config.base_url, config.model, config.api_key_env, config.timeout_s, config.max_retries,
                           max_tokens=config.max_tokens)
    scorer = explainer if not config.scorer_model or config.scorer_model == config.model else ChatClient(
        config.base_url, config.scorer_model, config.api_key_env, config.timeout_s, config.max_retries,
        max_tokens=config.max_tokens)
    check_inside_run(Path(db_path), follow=True)
    writer = sqlite3.connect(db_path)
    migrate(writer)
    result = ExplainResult(0, skipped, 0, [], [], explainer.usage)
    examples = {f: source.examples(f, config.shown, config.held_out) for f in todo}
    stats = {f: _stats(reader, f) for f in todo}
    try:
        with ThreadPoolExecutor(config.concurrency) as pool:
            labels = dict(zip(todo, pool.map(lambda f: _explain(explainer, examples[f], stats[f]), todo), strict=True))
            partners = _partners(todo, labels, reader, config, config.seed)
            jobs = {f: pool.submit(_score_both, scorer, examples[f], labels[f], partners.get(f), config.seed + f)
                    for f in todo}
            for f in todo:
                outcome = FeatureOutcome(f, labels[f], jobs[f].result(), examples[f].shown)
                _commit(writer, outcome, config)
                _tally(result, outcome)
                if progress is not None:
                    progress(f)
    finally:
        writer.close()
        reader.close()
    return result


def _todo(reader: sqlite3.Connection, config: ExplainConfig) -> tuple[list[int], int]:
    chosen = list(config.features) if config.features is not None else [row[0] for row in reader.execute(
        "SELECT feature_id FROM features WHERE firing_count > 0 ORDER BY firing_count DESC, feature_id LIMIT ?",
        (config.limit,))]
    live = {row[0] for row in reader.execute("SELECT DISTINCT feature_id FROM activations")}
    unknown = [f for f in chosen if f not in live]
    if unknown:
        raise ThinklensError(f"feature {unknown[0]} has no stored examples to explain (dead, or not in this database)")
    if config.force:
        return chosen, 0
    labelled = dict(reader.execute("SELECT feature_id, model_name FROM autointerp WHERE model_name != ?",
                                   (HEURISTIC_MODEL,)))
    done = {row[0] for row in _rows(reader, "SELECT feature_id FROM label_scores WHERE model_name = ? AND "
                                            "prompt_version = ? AND control = 0", (config.model, PROMPT_VERSION))}
    # Done: scored (or found unparsable) by this model and prompt. Kept: labelled by another model.
    todo = [f for f in chosen if f not in done and labelled.get(f, config.model) == config.model]
    return todo, len(chosen) - len(todo)


def _rows(connection: sqlite3.Connection, query: str, params: tuple) -> list[tuple]:
    try:
        return connection.execute(query, params).fetchall()
    except sqlite3.OperationalError:  # a database from before label_scores existed
        return []


def _stats(reader: sqlite3.Connection, feature_id: int) -> str:
    row = reader.execute("SELECT density, rate_prompt, rate_prefix, rate_thinking, rate_answer, top_logits "
                         "FROM features WHERE feature_id = ?", (feature_id,)).fetchone()
    if row is None:
        return ""
    density, *rates, logits = row
    segments = ", ".join(f"{name} {100 * (rate or 0):.1f} %" for name, rate in
                         zip(("prompt", "prefix", "thinking", "answer"), rates, strict=True))
    tokens = ", ".join(repr(pair[0]) for pair in json.loads(logits or "[]")[:8])
    return (f"It fires on {100 * density:.2f} % of tokens; share of tokens it fires on by segment of the trace: "
            f"{segments}.\nTokens it promotes (logit lens): {tokens}.\n")


def _explain(client: ChatClient, examples: FeatureExamples, stats: str) -> Explanation | None:
    prompt = explain_prompt(examples, stats)
    for _ in range(2):  # one retry of a malformed answer
        try:
            return parse_explanation(client.ask(prompt))
        except Unparsable:
            continue
    return None


def _partners(todo: list[int], labels: dict[int, Explanation | None], reader: sqlite3.Connection,
              config: ExplainConfig, seed: int) -> dict[int, Explanation]:
    """Each feature's shuffled-control label: another feature's, from this batch or labelled before."""
    pool = [(f, label) for f, label in labels.items() if label is not None]
    pool += [(f, Explanation(label, "", None)) for f, label in reader.execute(
        "SELECT feature_id, label FROM autointerp WHERE model_name = ? AND label IS NOT NULL", (config.model,))
        if f not in labels]
    rng = random.Random(seed)
    partners = {}
    for f in todo:
        others = [label for g, label in pool if g != f and label.label != (labels[f].label if labels[f] else None)]
        if others:
            partners[f] = rng.choice(others)
    return partners


def _score_both(client: ChatClient, examples: FeatureExamples, label: Explanation | None,
                partner: Explanation | None, seed: int) -> dict[bool, tuple[Scores | None, str, str | None]]:
    windows = [*examples.held_out, *examples.negatives]
    truth = [1] * len(examples.held_out) + [0] * len(examples.negatives)
    order = list(range(len(windows)))
    random.Random(seed).shuffle(order)
    windows, truth = [windows[i] for i in order], [truth[i] for i in order]
    out = {}
    for control, used in ((False, label), (True, partner)):
        if used is None or not examples.negatives or not examples.held_out:
            continue
        out[control] = _detect(client, used, windows, truth)
    return out


def _detect(client: ChatClient, label: Explanation, windows: list[Window], truth: list[int]
            ) -> tuple[Scores | None, str, str | None]:
    prompt = detect_prompt(label, windows)
    reply = ""
    for _ in range(2):  # one retry of a malformed answer
        reply = client.ask(prompt)
        try:
            return score_predictions(parse_predictions(reply, len(windows)), truth), label.label, reply
        except Unparsable:
            continue
    return None, label.label, reply


def _commit(writer: sqlite3.Connection, outcome: FeatureOutcome, config: ExplainConfig) -> None:
    """The feature's label and its scores, in one transaction (a kill loses at most this feature)."""
    scorer = config.scorer_model or config.model
    with writer:
        if outcome.explanation is not None:
            real = outcome.scores.get(False, (None,))[0]
            writer.execute("INSERT OR REPLACE INTO autointerp VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (
                outcome.feature_id, outcome.explanation.label, json.dumps([w.sequence_id for w in outcome.shown]),
                json.dumps([w.token_idx for w in outcome.shown]), None if real is None else real.balanced_accuracy,
                outcome.explanation.interestingness, config.model, PROMPT_VERSION))
        for control, (scores, label, reply) in outcome.scores.items():
            writer.execute("INSERT OR REPLACE INTO label_scores VALUES (?, ?, ?, ?, 'detection', ?, ?, ?, ?, ?, ?, ?, ?)",
                           (outcome.feature_id, config.model, PROMPT_VERSION, scorer, int(control), label,
                            scores.n if scores else None, scores.balanced_accuracy if scores else None,
                            scores.f1 if scores else None, scores.auroc if scores else None, int(scores is None),
                            (reply or "")[:2000]))
        if outcome.explanation is None:  # recorded, so a resumed run does not ask again
            writer.execute("INSERT OR REPLACE INTO label_scores VALUES (?, ?, ?, ?, 'explain', 0, NULL, NULL, NULL, "
                           "NULL, NULL, 1, NULL)", (outcome.feature_id, config.model, PROMPT_VERSION, scorer))


def _tally(result: ExplainResult, outcome: FeatureOutcome) -> None:
    result.explained += 1
    result.unparsable_labels += outcome.explanation is None
    for control, (scores, _, _) in outcome.scores.items():
        if scores is not None:
            (result.shuffled if control else result.real).append(scores.balanced_accuracy)


def _mean_interval(values: list[float], draws: int = 2000, seed: int = 0) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "mean": None, "low": None, "high": None}
    data = np.asarray(values)
    means = np.random.default_rng(seed).choice(data, size=(draws, len(data))).mean(axis=1)
    return {"n": len(data), "mean": float(data.mean()), "low": float(np.quantile(means, 0.025)),
            "high": float(np.quantile(means, 0.975))}


def _separates(real: list[float], shuffled: list[float]) -> str:
    r, s = _mean_interval(real), _mean_interval(shuffled)
    if not r["n"] or not s["n"]:
        return "no scores to compare (every reply unparsable, or too few features)"
    if r["low"] > s["high"]:
        return "yes: the real labels' interval lies above the shuffled labels'"
    return "no: real labels do not beat shuffled ones by a clear margin (intervals overlap or lie below)"
