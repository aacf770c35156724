"""Benchmark `thinklens serve`: feature pages over HTTP, and steered generation over HTTP.

In one run:
- feature page: GET /api/runs/R/features/F (and the HTML page) for random features of a 30k-feature
  database, p50/p95 over HTTP on localhost, against the same `ServedRun.feature` call in process
  (the baseline: everything but HTTP, routing and JSON). Goal: p95 ≤ 50 ms.
- generation: a steered chat completion over HTTP with the official `openai` client, tokens/s,
  against `Variant.generate` of the same prompt, steering and length in process. Goal: ≥ 0.9.

The wide database is made once in WORK from RUN's activations with a random SAE of RUN's architecture
and `--features` latents, its BatchTopK threshold set so that k fire per token as training would (the
page's queries do the same work as on a trained SAE).

    .venv/bin/python benchmarks/serve.py runs/demo [--features 30720] [--work /tmp/serve-bench]
"""

from __future__ import annotations

import argparse
import random
import statistics
import threading
import time
from pathlib import Path

import torch


def wide_run(run: Path, features: int, work: Path) -> Path:
    """RUN's traces and activations (linked) with a random SAE of `features` latents, indexed."""
    from thinklens.features.build import IndexConfig, build_index
    from thinklens.sae.formats import load_sae, save_sae
    from thinklens.sae.sae import Sae

    target = work / f"wide-{features}"
    if (target / "features.db").is_file():
        return target
    target.mkdir(parents=True, exist_ok=True)
    for name in ("traces", "activations"):
        if not (target / name).exists():
            (target / name).symlink_to((run / name).resolve())
    trained = load_sae(run / "sae").config
    torch.manual_seed(0)
    sae = Sae(trained.model_copy(update={"d_sae": features})).eval()
    if trained.arch.startswith("batchtopk"):  # the threshold training would learn: k active per token on average
        from thinklens.activations.store import ActivationStore

        store = ActivationStore(run / "activations")
        sample = next(iter(store.kept_batches(store.layers[0], 8192))).x  # massive and special tokens left out
        with torch.no_grad():
            pre = torch.addmm(sae.b_enc, sae.encoder_input(sample), sae.encoder_weight.T)
            sae.threshold.fill_(float(pre.flatten().topk(trained.k * len(sample)).values[-1]))
    save_sae(sae, target / "sae")
    print(f"indexing {features:,} random features over {run} (once) …", flush=True)
    build_index(IndexConfig(), target / "sae", target / "activations", target / "traces", target / "features.db")
    return target


def serve_in_thread(config, served):
    import uvicorn

    from thinklens.server.app import create_app

    server = uvicorn.Server(uvicorn.Config(create_app(config, served), host="127.0.0.1", port=0, log_level="error"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"


def percentiles(times: list[float]) -> tuple[float, float]:
    ordered = sorted(times)
    return statistics.median(ordered), ordered[int(0.95 * (len(ordered) - 1))]


def bench_pages(run: Path, requests: int) -> None:
    import urllib.request

    from thinklens.server.app import load_served
    from thinklens.server.config import ServeConfig

    config = ServeConfig(runs=(run,), no_model=True)
    served = load_served(config)
    (served_run,) = served.runs.values()
    rng = random.Random(0)
    live = [row[0] for row in served_run.db.execute("SELECT feature_id FROM features WHERE firing_count > 0")]
    picks = [rng.choice(live) for _ in range(requests)]
    for feature in picks[:20]:  # warm: the SAE, the shard indexes, SQLite's page cache
        served_run.feature(feature)
    in_process = []
    for feature in picks:
        started = time.perf_counter()
        served_run.feature(feature)
        served_run.decoder_neighbours(feature)
        in_process.append(time.perf_counter() - started)
    server, url = serve_in_thread(config, served)
    try:
        timings = {}
        for kind, path in (("api", "/api/runs/{run}/features/{f}"), ("page", "/runs/{run}/features/{f}")):
            times = []
            for feature in picks:
                started = time.perf_counter()
                with urllib.request.urlopen(url + path.format(run=served_run.name, f=feature)) as response:
                    response.read()
                times.append(time.perf_counter() - started)
            timings[kind] = percentiles(times)
    finally:
        server.should_exit = True
    base = percentiles(in_process)
    print(f"feature page on {served_run.n_features:,} features, {requests} random live features:")
    print(f"  in process (baseline): p50 {1000 * base[0]:.1f} ms, p95 {1000 * base[1]:.1f} ms")
    for kind, (p50, p95) in timings.items():
        print(f"  HTTP {kind:4}: p50 {1000 * p50:.1f} ms, p95 {1000 * p95:.1f} ms  (p95 ÷ in-process p95 = "
              f"{p95 / base[1]:.2f}; goal p95 ≤ 50 ms: {'met' if p95 <= 0.05 else 'not met'})")


def bench_generation(run: Path, tokens: int, repeats: int) -> None:
    import openai

    from thinklens.models.formats import render_messages
    from thinklens.models.generate import Sampling
    from thinklens.server.app import load_served
    from thinklens.server.config import ServeConfig

    config = ServeConfig(runs=(run,), max_tokens=tokens)
    served = load_served(config)
    variant = served.service.variant
    feature = 1
    prompt = [{"role": "user", "content": "What is 17 + 25?"}]
    text = render_messages(variant.loaded.tokenizer, variant.fmt, prompt)

    def in_process() -> float:
        from thinklens.features.db import FeatureDB
        from thinklens.steering.variant import typical_max_activations

        with FeatureDB(run / "features.db") as db:
            variant.typical_max.update(typical_max_activations(db, [feature]))
        variant.reset().set(feature, 4.0, policy="after_prefix")
        started = time.perf_counter()
        (output,) = variant.generate([text], tokens, Sampling(greedy=True), rendered=True)
        elapsed = time.perf_counter() - started
        variant.reset()
        return (len(output.token_ids) - output.generation_start) / elapsed

    server, url = serve_in_thread(config, served)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)

    def over_http() -> float:
        started = time.perf_counter()
        reply = client.chat.completions.create(model=f"{served.model_id}+f{feature}@4:after_prefix", messages=prompt,
                                               max_tokens=tokens, temperature=0)
        return reply.usage.completion_tokens / (time.perf_counter() - started)

    try:
        in_process(), over_http()  # warm both paths
        local, remote = [], []
        for _ in range(repeats):  # interleaved, so drift in the machine's speed hits both alike
            local.append(in_process())
            remote.append(over_http())
    finally:
        server.should_exit = True
    ratio = statistics.median(remote) / statistics.median(local)
    print(f"steered generation, {tokens} tokens, {repeats} interleaved repeats on {served.model_id}:")
    print(f"  in process {statistics.median(local):.1f} tokens/s, over HTTP {statistics.median(remote):.1f} tokens/s: "
          f"HTTP ÷ in-process = {ratio:.2f} (goal ≥ 0.9: {'met' if ratio >= 0.9 else 'not met'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--features", type=int, default=30720)
    parser.add_argument("--work", type=Path, default=Path("/tmp/thinklens-serve-bench"))
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-pages", action="store_true")
    parser.add_argument("--skip-generation", action="store_true")
    args = parser.parse_args()
    if not args.skip_pages:
        bench_pages(wide_run(args.run, args.features, args.work), args.requests)
    if not args.skip_generation:
        bench_generation(args.run, args.tokens, args.repeats)


if __name__ == "__main__":
    main()
