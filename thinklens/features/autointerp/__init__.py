"""LLM labels that are scored: explain a feature from its examples, then score the explanation by
asking a model to predict which held-out examples fire (`thinklens explain`).

- `prompts/`: the versioned prompt templates (their version is written with every label);
- `examples`: the shown, held-out and non-activating examples of a feature, from features.db;
- `replies`: parsing the models' answers, and the metrics of a scorer's predictions;
- `client`: the OpenAI-compatible chat client (retries, timeout, token counts);
- `run`: the loop over features, resumable, and the shuffled-label control.
"""
