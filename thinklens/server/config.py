"""`ServeConfig`: what `thinklens serve` serves, where, and the bounds every request lives within."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class ServeConfig(BaseModel):
    """The runs to serve, the address, and the limits on each request."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    runs: tuple[Path, ...] = Field(default=(), description="Run directories to serve (the first one's model is the "
                                                           "one served).")
    ddb: Path | None = Field(default=None, description="A DuckDB feature database in Goodfire's R1 release layout "
                                                       "(tables tokens, activations) to browse, read-only.")
    autointerp: Path | None = Field(default=None, description="The release's autointerp SQLite file (labels) for "
                                                              "--ddb.")
    host: str = Field(default="127.0.0.1", description="Address to bind (localhost unless you mean to share it).")
    port: int = Field(default=8000, ge=0, le=65535, description="Port (0: any free port).")
    model: str | None = Field(default=None, description="Serve this model without a run: its own chat template, no "
                              "thinking, no steering (e.g. 'smollm2' as the explainer of `thinklens explain`).")
    no_model: bool = Field(default=False, description="Serve the browser only; do not load the model.")
    device: str = Field(default="auto", description="Where the model runs: 'auto', 'cpu', 'cuda', ...")
    max_text_chars: int = Field(default=8000, ge=1, description="Longest prompt or text a request may send.")
    max_tokens: int = Field(default=512, ge=1, description="Most new tokens one request may ask for.")
    capacity: int = Field(default=4, ge=1, description="Generation requests running or waiting at once; more get 503.")
    timeout_s: float = Field(default=120.0, gt=0, description="Longest a generation request may take.")

    @model_validator(mode="after")
    def _something_to_serve(self) -> ServeConfig:
        if not self.runs and self.ddb is None and self.model is None:
            raise ValueError("nothing to serve: pass a run directory, --ddb FILE.ddb or --model SPEC")
        if self.model is not None and (self.runs or self.ddb is not None or self.no_model):
            raise ValueError("--model serves a model on its own: pass it without runs, --ddb or --no-model")
        if self.autointerp is not None and self.ddb is None:
            raise ValueError("--autointerp labels a --ddb database: pass --ddb too")
        return self

    @field_validator("runs")
    @classmethod
    def _distinct_names(cls, runs: tuple[Path, ...]) -> tuple[Path, ...]:
        names = [Path(run).resolve().name for run in runs]
        if len(set(names)) != len(names):
            raise ValueError(f"two runs share a directory name ({names}): serve runs with distinct names")
        return runs
