"""Statistics shared by the layers: a share with its Wilson score interval, the difference of two shares,
group bootstrap weights and a random split of groups."""

from __future__ import annotations

import math

import numpy as np
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


def group_bootstrap_weights(groups: int, draws: int, seed: int) -> np.ndarray:
    """(draws, groups) float64: how often each group is drawn in each resample of `groups` groups with
    replacement. Statistics that are sums over groups resample as `weights @ per_group_values`."""
    generator = np.random.default_rng(seed)
    return np.stack([np.bincount(generator.integers(0, groups, groups), minlength=groups)
                     for _ in range(draws)]).astype(np.float64)


def split_groups(groups: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The group indices shuffled into two halves. Random, not even/odd: runs interleave prompt sets, so
    sequence ids (and the groups made from them) alternate between sets, and a parity split would
    compare one prompt set with the other."""
    order = np.random.default_rng(seed).permutation(groups)
    return np.sort(order[: groups // 2]), np.sort(order[groups // 2:])


def rate_difference(first: Rate, second: Rate) -> tuple[float, float, float]:
    """first.share − second.share with Newcombe's 95 % interval (the hybrid score interval, from the two
    Wilson intervals): sound near 0 and 1, where the normal approximation is not."""
    p, q = first.share, second.share
    if first.n == 0 or second.n == 0:
        return float("nan"), float("nan"), float("nan")
    low = (p - q) - math.sqrt((p - first.low) ** 2 + (second.high - q) ** 2)
    high = (p - q) + math.sqrt((first.high - p) ** 2 + (q - second.low) ** 2)
    return p - q, low, high
