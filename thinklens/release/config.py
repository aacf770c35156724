"""The settings of `thinklens publish` and `thinklens import` (light: the CLI imports them to build its options)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

R1_MODEL = "deepseek-ai/DeepSeek-R1"


class PublishConfig(BaseModel):
    """What `publish` packages and where it pushes it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = Field(default=None, description="Release name (the .ddb file, the SAELens entry); default: "
                                                        "the run directory's name.")
    traces: bool = Field(default=True, description="Include the traces as a Parquet dataset.")
    push: str | None = Field(default=None, description="Hugging Face repo id to upload OUT to (needs the network "
                                                       "and HF_TOKEN).")
    private: bool = Field(default=False, description="Create the pushed repository private.")


class ImportR1Config(BaseModel):
    """Goodfire's R1 files to import."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sae: Path = Field(description="The release's SAE state dict (.pt with W, b_enc, b_dec).")
    k: int = Field(default=64, ge=1, description="Active features per token: 64 for the general-reasoning SAE, "
                                                 "128 for the maths one.")
    layer: int = Field(default=37, ge=0, description="The layer the SAE reads (the release's: 37).")
    model: str = Field(default=R1_MODEL, description="The model the SAE was trained on.")
    db: Path | None = Field(default=None, description="The release's feature database (.ddb: tokens, activations).")
    autointerp: Path | None = Field(default=None, description="The release's labels (autointerp.db, SQLite).")
    memory_limit: str | None = Field(default=None, pattern=r"^\d+(\.\d+)?\s*([KMGT]i?B|B)$", description="DuckDB's memory limit while summarising (e.g. 8GB); "
                                                               "beyond it DuckDB spills to RUN/.import-spill. "
                                                               "Default: DuckDB's, 80 % of RAM.")
    checkpoint_seconds: float = Field(default=60.0, gt=0, description="Save the pass over the activations this "
                                                                       "often (a killed import resumes from it).")
