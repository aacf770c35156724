"""`explain`: label features with an LLM and score each label on held-out examples, into features.db.

Per feature: the explainer sees the *shown* examples (activating tokens marked) with the feature's
segment rates and logit-lens tokens, and answers a label, a description and an interestingness. The
scorer then judges the label on examples it was not shown, two ways:

- *detection*: the held-out activating examples mixed with as many non-activating ones, unmarked; the
  scorer gives each a probability that the feature fires. Its balanced accuracy is the label's `quality`.
- *fuzzing*: held-out activating examples with marks, half where the feature fires and half moved to
  random tokens (as many); the scorer says which marks are right. This tests *where*, not only *whether*.

The control scores the same examples with *another* feature's label: a method whose real labels do not
beat the shuffled ones is not telling anything, and the result says so.

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
from typing import Literal

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
PROMPT_VERSION = "thinklens-explain-v2"  # prompts/*-v2.txt; a new template is a new version
METHODS = ("detection", "fuzzing")


class ExplainConfig(BaseModel):
    """Which endpoint explains and scores which features, with how many examples."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    base_url: str = Field(min_length=1, description="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1.")
    model: str = Field(min_length=1, description="Model that writes the labels.")
    scorer_model: str | None = Field(default=None, description="Model that scores them (default: the same).")
    api_key_env: str | None = Field(default="OPENAI_API_KEY", description="Environment variable holding the key.")
    features: tuple[int, ...] | None = Field(default=None, description="Features to explain (default: a seeded "
                                                                       "random sample of the live ones, up to --limit).")
    limit: int = Field(default=50, ge=1, description="Most features explained when --features is not given.")
    max_density: float = Field(default=0.05, gt=0, le=1, description="The sample prefers features firing on at most "
                               "this share of tokens (denser ones are hard to tell apart from their negatives).")
    shown: int = Field(default=10, ge=1, le=64, description="Activating examples shown to the explainer.")
    held_out: int = Field(default=8, ge=2, le=64, description="Held-out activating examples scored (and as many "
                                                              "non-activating ones).")
    window: int = Field(default=16, ge=2, le=64, description="Tokens of context around each example.")
    concurrency: int = Field(default=4, ge=1, le=64, description="Requests in flight at once.")
    timeout_s: float = Field(default=60.0, gt=0, description="Timeout of one request.")
    max_retries: int = Field(default=4, ge=0, le=10, description="Retries on 429, 5xx and dropped connections.")
    max_tokens: int = Field(default=512, ge=1, description="Most tokens of one answer (a reasoning model thinks "
                                                           "before it answers).")
    prompt: Literal["full", "compact"] = Field(default="full", description="full: examples with the segment rates "
                                               "and logit-lens tokens, answered with label, description and "
                                               "interestingness; compact: the examples and a label only (small models).")
    scoring: Literal["list", "each"] = Field(default="list", description="list: one request per method, answered "
                                             "with a JSON list; each: one request per example, answered Yes/No, its "
                                             "probability from the top log-probabilities (small models; more requests).")
    force: bool = Field(default=False, description="Relabel features labelled before, by any model.")
    seed: int = Field(default=0, description="Seed of the negatives and the shuffled control.")

    @property
    def prompt_version(self) -> str:
        """The version written with every label: the templates' version, and the variant when not the default."""
        variant = [part for part, default in ((self.prompt, "full"), (self.scoring, "list")) if part != default]
        return "-".join([PROMPT_VERSION, *variant])


Scored = tuple[Scores | None, str, str]  # the scores (None: unparsable), the label scored, the last reply


@dataclass
class FeatureOutcome:
    feature_id: int
    explanation: Explanation | None
    scores: dict[tuple[str, bool], Scored] = field(default_factory=dict)  # (method, control) → …
    shown: list[Window] = field(default_factory=list)
    reply: str = ""  # the explainer's last answer (kept when it had no label)


@dataclass(frozen=True)
class ScoringTask:
    """One method's question to the scorer: these windows (marked or not), and which are right (1)."""

    method: str
    windows: list[Window]
    truth: list[int]
    marked: bool


@dataclass
class ExplainResult:
    explained: int
    skipped: int
    unparsable_labels: int
    usage: Usage
    # (method, control, metric) → one value per scored feature; metric: balanced_accuracy or auroc
    values: dict[tuple[str, bool, str], list[float]] = field(default_factory=dict)

    def summary(self) -> dict[str, dict[str, dict[str, object]]]:
        """Per method and metric (balanced accuracy; AUROC where the scorer's probabilities rank): the mean of
        real and shuffled labels with bootstrap 95 % intervals over features, and whether real beats shuffled."""
        out: dict[str, dict[str, dict[str, object]]] = {}
        for method in METHODS:
            for metric in ("balanced_accuracy", "auroc"):
                real, shuffled = self.values.get((method, False, metric), []), self.values.get((method, True, metric), [])
                out.setdefault(method, {})[metric] = {"real": _mean_interval(real), "shuffled": _mean_interval(shuffled),
                                                      "separates": _separates(real, shuffled)}
        return out


def explain_prompt(examples: FeatureExamples, stats: str, prompt: str = "full") -> str:
    blocks = "\n".join(f"{i + 1}. {window.text(marked=True)!r}" for i, window in enumerate(examples.shown))
    if prompt == "compact":
        return (PROMPTS / "explain-compact-v2.txt").read_text().format(examples=blocks)
    return (PROMPTS / "explain-v2.txt").read_text().format(values_note="", stats=stats, examples=blocks)


def scoring_prompt(label: Explanation, task: ScoringTask) -> str:
    """The scorer's question about every window of `task` at once (answered with a list)."""
    blocks = "\n".join(f"{i + 1}. {window.text(marked=task.marked)!r}" for i, window in enumerate(task.windows))
    template = "fuzz-v2.txt" if task.method == "fuzzing" else "detect-v2.txt"
    return (PROMPTS / template).read_text().format(described=_described(label), examples=blocks, n=len(task.windows))


def example_prompt(label: Explanation, task: ScoringTask, window: Window) -> str:
    """The scorer's yes/no question about one window."""
    template = "fuzz-each-v2.txt" if task.method == "fuzzing" else "detect-each-v2.txt"
    return (PROMPTS / template).read_text().format(described=_described(label),
                                                   example=repr(window.text(marked=task.marked)))


def _instructions(prompt: str) -> str:
    """The explainer's template without its examples: what a label must not merely repeat."""
    return (PROMPTS / ("explain-compact-v2.txt" if prompt == "compact" else "explain-v2.txt")).read_text()


def _described(label: Explanation) -> str:
    return f'"{label.label}"' + (f" — {label.description}" if label.description else "")


def scoring_tasks(examples: FeatureExamples, seed: int) -> list[ScoringTask]:
    """Detection (held-out vs negatives, unmarked) and fuzzing (held-out, half marked right and half at
    random tokens), each in a seeded random order; a method without both kinds of example is left out."""
    rng = random.Random(seed)
    fuzzed = [w.fuzzed(rng) for w in examples.held_out[1::2]]
    tasks = []
    for method, right, wrong, marked in (("detection", examples.held_out, examples.negatives, False),
                                         ("fuzzing", examples.held_out[0::2], [w for w in fuzzed if w], True)):
        if not right or not wrong:
            continue
        pairs = [(w, 1) for w in right] + [(w, 0) for w in wrong]
        rng.shuffle(pairs)
        tasks.append(ScoringTask(method, [w for w, _ in pairs], [t for _, t in pairs], marked))
    return tasks


def explain_run(config: ExplainConfig, db_path: Path, source: ExampleSource, progress=None,
                dry_run: bool = False) -> ExplainResult | str:
    """Explain and score the chosen features of `db_path` (a dry run returns the first explainer prompt)."""
    reader = open_read_only(db_path)
    todo, skipped = _todo(reader, config)
    if dry_run:
        if not todo:
            raise ThinklensError("nothing to explain: every chosen feature is labelled (pass --force to redo)")
        return explain_prompt(source.examples(todo[0], config.shown, config.held_out), _stats(reader, todo[0]),
                              config.prompt)
    explainer = ChatClient(config.base_url, config.model, config.api_key_env, config.timeout_s, config.max_retries,
                           max_tokens=config.max_tokens)
    scorer = explainer if not config.scorer_model or config.scorer_model == config.model else ChatClient(
        config.base_url, config.scorer_model, config.api_key_env, config.timeout_s, config.max_retries,
        max_tokens=config.max_tokens)
    check_inside_run(Path(db_path), follow=True)
    writer = sqlite3.connect(db_path)
    migrate(writer)
    result = ExplainResult(0, skipped, 0, explainer.usage)
    examples = {f: source.examples(f, config.shown, config.held_out) for f in todo}
    stats = {f: _stats(reader, f) for f in todo}
    try:
        with ThreadPoolExecutor(config.concurrency) as pool:
            labels = dict(zip(todo, pool.map(lambda f: _explain(explainer, examples[f], stats[f], config.prompt), todo),
                              strict=True))
            partners = _partners(todo, labels, reader, config, config.seed)
            jobs = {f: pool.submit(_score_all, scorer, examples[f], labels[f][0], partners.get(f), config.seed + f,
                                   config.scoring) for f in todo}
            for f in todo:
                outcome = FeatureOutcome(f, labels[f][0], jobs[f].result(), examples[f].shown, labels[f][1])
                _commit(writer, outcome, config)
                _tally(result, outcome)
                if progress is not None:
                    progress(f)
    finally:
        writer.close()
        reader.close()
    return result


def _todo(reader: sqlite3.Connection, config: ExplainConfig) -> tuple[list[int], int]:
    chosen = list(config.features) if config.features is not None else _sample(reader, config)
    live = {row[0] for row in reader.execute("SELECT DISTINCT feature_id FROM activations")}
    unknown = [f for f in chosen if f not in live]
    if unknown:
        raise ThinklensError(f"feature {unknown[0]} has no stored examples to explain (dead, or not in this database)")
    if config.force:
        return chosen, 0
    labelled = dict(reader.execute("SELECT feature_id, model_name FROM autointerp WHERE model_name != ?",
                                   (HEURISTIC_MODEL,)))
    done = {row[0] for row in _rows(reader, "SELECT feature_id FROM label_scores WHERE model_name = ? AND "
                                            "prompt_version = ? AND control = 0", (config.model, config.prompt_version))}
    # Done: scored (or found unparsable) by this model and prompt. Kept: labelled by another model.
    todo = [f for f in chosen if f not in done and labelled.get(f, config.model) == config.model]
    return todo, len(chosen) - len(todo)


def _sample(reader: sqlite3.Connection, config: ExplainConfig) -> list[int]:
    """A seeded random sample of the live features, the sparse ones first; a larger limit extends a smaller
    one's sample (so a re-run with more features keeps the ones done)."""
    rows = reader.execute("SELECT feature_id, density FROM features WHERE firing_count > 0 ORDER BY feature_id")
    sparse, dense = [], []
    for feature_id, density in rows:
        (sparse if density <= config.max_density else dense).append((density, feature_id))
    random.Random(config.seed).shuffle(sparse)
    return [f for _, f in sparse + sorted(dense)][: config.limit]


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


def _explain(client: ChatClient, examples: FeatureExamples, stats: str, prompt_kind: str
             ) -> tuple[Explanation | None, str]:
    prompt = explain_prompt(examples, stats, prompt_kind)
    reply = ""
    for _ in range(2):  # one retry of a malformed answer
        reply = client.ask(prompt)
        try:
            return parse_explanation(reply, _instructions(prompt_kind)), reply
        except Unparsable:
            continue
    return None, reply


def _partners(todo: list[int], explained: dict[int, tuple[Explanation | None, str]], reader: sqlite3.Connection,
              config: ExplainConfig, seed: int) -> dict[int, Explanation]:
    """Each feature's shuffled-control label: another feature's, from this batch or labelled before."""
    labels = {f: label for f, (label, _) in explained.items()}
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


def _score_all(client: ChatClient, examples: FeatureExamples, label: Explanation | None,
               partner: Explanation | None, seed: int, scoring: str = "list") -> dict[tuple[str, bool], Scored]:
    """Every method, with the feature's label and with the control's (the same examples for both); nothing
    for a feature without a label (a control has nothing to be compared with)."""
    if label is None:
        return {}
    score = _score_each if scoring == "each" else _score
    out = {}
    for task in scoring_tasks(examples, seed):
        for control, used in ((False, label), (True, partner)):
            if used is not None:
                out[task.method, control] = score(client, used, task)
    return out


def _score_each(client: ChatClient, label: Explanation, task: ScoringTask) -> Scored:
    """One yes/no question per window; the reply kept is the list of probabilities (or why one failed)."""
    predicted = []
    for window in task.windows:
        prompt = example_prompt(label, task, window)
        for attempt in range(2):  # one retry of a malformed answer
            try:
                predicted.append(client.ask_yes_no(prompt))
                break
            except Unparsable as exc:
                if attempt == 1:
                    return None, label.label, f"example {len(predicted) + 1}: {exc}"
    return score_predictions(predicted, task.truth), label.label, json.dumps([round(p, 4) for p in predicted])


def _score(client: ChatClient, label: Explanation, task: ScoringTask) -> Scored:
    prompt = scoring_prompt(label, task)
    reply = ""
    for _ in range(2):  # one retry of a malformed answer
        reply = client.ask(prompt)
        try:
            return score_predictions(parse_predictions(reply, len(task.windows)), task.truth), label.label, reply
        except Unparsable:
            continue
    return None, label.label, reply


def _commit(writer: sqlite3.Connection, outcome: FeatureOutcome, config: ExplainConfig) -> None:
    """The feature's label and its scores, in one transaction (a kill loses at most this feature). They replace
    what this model and prompt version wrote for the feature before (a forced re-run leaves nothing stale); a
    label of another model stays where the new answer had none."""
    scorer = config.scorer_model or config.model
    with writer:
        writer.execute("DELETE FROM label_scores WHERE feature_id = ? AND model_name = ? AND prompt_version = ?",
                       (outcome.feature_id, config.model, config.prompt_version))
        if outcome.explanation is None:  # this model's label from before lost its scores with them: stale
            writer.execute("DELETE FROM autointerp WHERE feature_id = ? AND model_name = ? AND prompt_version = ?",
                           (outcome.feature_id, config.model, config.prompt_version))
        if outcome.explanation is not None:
            real = outcome.scores.get(("detection", False), (None,))[0]
            writer.execute("INSERT OR REPLACE INTO autointerp VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (
                outcome.feature_id, outcome.explanation.label, json.dumps([w.sequence_id for w in outcome.shown]),
                json.dumps([w.token_idx for w in outcome.shown]), None if real is None else real.balanced_accuracy,
                outcome.explanation.interestingness, config.model, config.prompt_version))
        for (method, control), (scores, label, reply) in outcome.scores.items():
            writer.execute("INSERT OR REPLACE INTO label_scores VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           (outcome.feature_id, config.model, config.prompt_version, scorer, method, int(control), label,
                            scores.n if scores else None, scores.balanced_accuracy if scores else None,
                            scores.f1 if scores else None, scores.auroc if scores else None, int(scores is None),
                            (reply or "")[:2000]))
        if outcome.explanation is None:  # recorded, so a resumed run does not ask again
            writer.execute("INSERT OR REPLACE INTO label_scores VALUES (?, ?, ?, ?, 'explain', 0, NULL, NULL, NULL, "
                           "NULL, NULL, 1, ?)", (outcome.feature_id, config.model, config.prompt_version, scorer,
                                                 outcome.reply[:2000]))


def _tally(result: ExplainResult, outcome: FeatureOutcome) -> None:
    result.explained += 1
    result.unparsable_labels += outcome.explanation is None
    for (method, control), (scores, _, _) in outcome.scores.items():
        for metric in ("balanced_accuracy", "auroc") if scores is not None else ():
            if getattr(scores, metric) is not None:
                result.values.setdefault((method, control, metric), []).append(getattr(scores, metric))


def _mean_interval(values: list[float], draws: int = 2000, seed: int = 0) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "mean": None, "low": None, "high": None}
    data = np.asarray(values)
    means = np.random.default_rng(seed).choice(data, size=(draws, len(data))).mean(axis=1)
    return {"n": len(data), "mean": float(data.mean()), "low": float(np.quantile(means, 0.025)),
            "high": float(np.quantile(means, 0.975))}


def format_interval(part: dict[str, float | int | None]) -> str:
    """A `_mean_interval` as text: "0.512 [0.480, 0.545]", or "—" without values."""
    return "—" if part["mean"] is None else f"{part['mean']:.3f} [{part['low']:.3f}, {part['high']:.3f}]"


def _separates(real: list[float], shuffled: list[float]) -> str:
    r, s = _mean_interval(real), _mean_interval(shuffled)
    if not r["n"] or not s["n"]:
        return "no scores to compare (every reply unparsable, or too few features)"
    if r["low"] > s["high"]:
        return "yes: the real labels' interval lies above the shuffled labels'"
    return "no: real labels do not beat shuffled ones by a clear margin (intervals overlap or lie below)"


def stored_summary(connection: sqlite3.Connection) -> list[dict[str, object]]:
    """Per (labelling model, prompt version, scorer, method) in a database: features scored, unparsable
    answers, and the real and shuffled labels' mean balanced accuracy and AUROC with bootstrap intervals."""
    groups: dict[tuple, dict[str, list]] = {}
    for model, version, scorer, method, control, accuracy, auroc, unparsable in _rows(connection, (
            "SELECT model_name, prompt_version, scorer, method, control, balanced_accuracy, auroc, unparsable "
            "FROM label_scores ORDER BY model_name, prompt_version, scorer, method"), ()):
        group = groups.setdefault((model, version, scorer, method), {"unparsable": [], "real_ba": [], "shuffled_ba": [],
                                                                     "real_auroc": [], "shuffled_auroc": []})
        group["unparsable"].append(bool(unparsable) and not control)
        kind = "shuffled" if control else "real"
        if accuracy is not None:
            group[f"{kind}_ba"].append(accuracy)
        if auroc is not None:
            group[f"{kind}_auroc"].append(auroc)
    return [{"model": model, "prompt_version": version, "scorer": scorer, "method": method,
             "unparsable": sum(group["unparsable"]),
             **{key: _mean_interval(values) for key, values in group.items() if key != "unparsable"},
             "separates": _separates(group["real_ba"], group["shuffled_ba"]),
             "separates_auroc": _separates(group["real_auroc"], group["shuffled_auroc"])}
            for (model, version, scorer, method), group in groups.items()]
