"""The textbook TopK SAE loop that benchmarks measure thinklens against (about 40 lines of PyTorch).

Dense pre-activations of the centred input, per-token top-k, a dense (batch × d_sae) code matrix,
a dense decoder matmul, Adam, unit-norm decoder rows after each step. No warm-up, no input
scaling, no auxiliary loss: what a researcher writes from the TopK paper in an afternoon.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F

from thinklens.activations.reader import ActivationReader
from thinklens.sae.train import TrainConfig, _reader_config

PLAIN_LR = 4e-4  # the TopK paper's order of magnitude; the loop has no schedule


class PlainTopK:
    """The loop's parameters and optimiser; `step(x)` is one training step on a batch."""

    def __init__(self, d_in: int, d_sae: int, k: int, first_batch: torch.Tensor, seed: int = 0,
                 lr: float = PLAIN_LR) -> None:
        device = first_batch.device
        torch.manual_seed(seed)
        self.k = k
        self.W_dec = F.normalize(torch.randn(d_sae, d_in), dim=-1).to(device).requires_grad_()
        self.W_enc = self.W_dec.detach().T.clone().requires_grad_()  # (d_in, d_sae)
        self.b_enc = torch.zeros(d_sae, device=device, requires_grad=True)
        self.b_dec = first_batch.mean(dim=0).clone().requires_grad_()
        self.optimizer = torch.optim.Adam([self.W_enc, self.W_dec, self.b_enc, self.b_dec], lr=lr)

    def step(self, x: torch.Tensor) -> None:
        pre = (x - self.b_dec) @ self.W_enc + self.b_enc  # (n, d_sae)
        top = pre.topk(self.k, dim=-1)
        acts = torch.zeros_like(pre).scatter(1, top.indices, F.relu(top.values))  # dense (n, d_sae)
        recon = acts @ self.W_dec + self.b_dec
        loss = (recon - x).pow(2).sum(dim=-1).mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            self.W_dec.div_(self.W_dec.norm(dim=-1, keepdim=True))

    def weights(self) -> dict:
        return {name: getattr(self, name).detach() for name in ("W_enc", "W_dec", "b_enc", "b_dec")}


def plain_topk_training(activations: Path, config: TrainConfig, layer: int, steps: int,
                        lr: float = PLAIN_LR) -> tuple[dict, float]:
    """Train on the same reader as thinklens (same batches, same order) with `config`'s width, k, batch size
    and seed; its weights and the seconds it trained."""
    batches = iter(ActivationReader(activations, _reader_config(config, layer, epochs=10**9)))
    first = next(iter(ActivationReader(activations, _reader_config(config, layer, epochs=1))))
    loop = PlainTopK(first.shape[1], config.expansion * first.shape[1], config.k, first, config.seed, lr)
    started = time.perf_counter()
    for _ in range(steps):
        loop.step(next(batches))
    return loop.weights(), time.perf_counter() - started


def plain_codes(weights: dict, x: torch.Tensor, k: int) -> torch.Tensor:
    """Dense (n, d_sae) codes of the plain loop's SAE."""
    pre = (x - weights["b_dec"]) @ weights["W_enc"] + weights["b_enc"]
    top = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(1, top.indices, F.relu(top.values))


def plain_recon(weights: dict, x: torch.Tensor, k: int) -> torch.Tensor:
    """The plain loop's reconstruction of x."""
    return plain_codes(weights, x, k) @ weights["W_dec"] + weights["b_dec"]
