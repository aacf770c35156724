"""Where a stage runs beyond one process: the Ray settings the stage configs share (thinklens.distributed
runs them)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class RayPlacement(BaseModel):
    """`workers` and `ray_address`, for a stage config that can run on Ray (placement: never recorded)."""

    workers: int = Field(default=1, ge=1, le=1024, description="Ray actors working at once, one model or SAE "
                                                               "each (1: this process, no Ray).")
    ray_address: str | None = Field(default=None, description="Ray cluster to join ('auto': the running one); "
                                                              "default: a local one of --workers CPUs.")

    @property
    def distributed(self) -> bool:
        return self.workers > 1 or self.ray_address is not None
