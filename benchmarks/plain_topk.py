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


def plain_topk_training(activations: Path, config: TrainConfig, layer: int, steps: int,
                        lr: float = PLAIN_LR) -> tuple[dict, float]:
    """Train on the same reader as thinklens (same batches, same order) with `config`'s width, k, batch size
    and seed; its weights and the seconds it trained."""
    reader = ActivationReader(activations, _reader_config(config, layer, epochs=10**9))
    batches = iter(reader)
    first = next(iter(ActivationReader(activations, _reader_config(config, layer, epochs=1))))
    d_in = first.shape[1]
    d_sae = config.expansion * d_in
    torch.manual_seed(config.seed)
    W_dec = F.normalize(torch.randn(d_sae, d_in), dim=-1).requires_grad_()
    W_enc = W_dec.detach().T.clone().requires_grad_()  # (d_in, d_sae)
    b_enc = torch.zeros(d_sae, requires_grad=True)
    b_dec = first.mean(dim=0).clone().requires_grad_()
    optimizer = torch.optim.Adam([W_enc, W_dec, b_enc, b_dec], lr=lr)
    started = time.perf_counter()
    for _ in range(steps):
        x = next(batches)
        pre = (x - b_dec) @ W_enc + b_enc  # (n, d_sae)
        top = pre.topk(config.k, dim=-1)
        acts = torch.zeros_like(pre).scatter(1, top.indices, F.relu(top.values))  # dense (n, d_sae)
        recon = acts @ W_dec + b_dec
        loss = (recon - x).pow(2).sum(dim=-1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            W_dec.div_(W_dec.norm(dim=-1, keepdim=True))
    seconds = time.perf_counter() - started
    return {"W_enc": W_enc.detach(), "W_dec": W_dec.detach(), "b_enc": b_enc.detach(), "b_dec": b_dec.detach()}, seconds


def plain_codes(weights: dict, x: torch.Tensor, k: int) -> torch.Tensor:
    """Dense (n, d_sae) codes of the plain loop's SAE."""
    pre = (x - weights["b_dec"]) @ weights["W_enc"] + weights["b_enc"]
    top = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(1, top.indices, F.relu(top.values))


def plain_recon(weights: dict, x: torch.Tensor, k: int) -> torch.Tensor:
    """The plain loop's reconstruction of x."""
    return plain_codes(weights, x, k) @ weights["W_dec"] + weights["b_dec"]
