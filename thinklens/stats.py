"""Statistics shared by the layers: a share with its Wilson score interval."""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict


class Rate(BaseModel):
    """hits of n, with a Wilson 95 % interval."""

    model_config = ConfigDict(frozen=True)

    hits: int
    n: int
    low: float
    high: float

    @property
    def share(self) -> float:
        return self.hits / self.n if self.n else float("nan")

    def __str__(self) -> str:
        return f"{self.share:.1%} [{self.low:.1%}, {self.high:.1%}] ({self.hits}/{self.n})"


def rate(hits: int, n: int, z: float = 1.96) -> Rate:
    """A share with its Wilson score interval (sound at 0 % and 100 %, unlike the normal one)."""
    if n == 0:
        return Rate(hits=0, n=0, low=float("nan"), high=float("nan"))
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return Rate(hits=hits, n=n, low=max(0.0, centre - half), high=min(1.0, centre + half))
