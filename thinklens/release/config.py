"""The settings of `thinklens publish` (light: the CLI imports it to build its options)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class PublishConfig(BaseModel):
    """What `publish` packages and where it pushes it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = Field(default=None, description="Release name (the .ddb file, the SAELens entry); default: "
                                                        "the run directory's name.")
    traces: bool = Field(default=True, description="Include the traces as a Parquet dataset.")
    push: str | None = Field(default=None, description="Hugging Face repo id to upload OUT to (needs the network "
                                                       "and HF_TOKEN).")
    private: bool = Field(default=False, description="Create the pushed repository private.")
