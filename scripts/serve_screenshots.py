"""Screenshots of `thinklens serve` for the README, taken in headless Chromium (Playwright).

    .venv/bin/python scripts/serve_screenshots.py runs/demo docs/images

Serves RUN with its model on a free localhost port, opens its most frequent thinking feature's page
and the playground with that feature, generates both completions, and saves two PNGs.
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--feature", type=int, default=None, help="Feature to show (default: chosen as above).")
    args = parser.parse_args()

    import uvicorn
    from playwright.sync_api import sync_playwright

    from thinklens.server.app import create_app, load_served
    from thinklens.server.catalog import FeatureQuery
    from thinklens.server.config import ServeConfig

    config = ServeConfig(runs=(args.run,), max_tokens=160)
    served = load_served(config)
    (run,) = served.runs.values()
    feature = args.feature
    if feature is None:
        page = run.features(FeatureQuery(sort="enrichment", segment="thinking", limit=50))
        feature = max(page["features"], key=lambda f: f["firing_count"])["feature_id"]
    server = uvicorn.Server(uvicorn.Config(create_app(config, served), host="127.0.0.1", port=0, log_level="error"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    args.out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 1100})
        page.goto(f"{url}/runs/{run.name}/features/{feature}")
        page.wait_for_selector("#minimap[data-drawn='1']", timeout=20_000)
        page.screenshot(path=str(args.out / "serve-feature.png"))
        page.goto(f"{url}/runs/{run.name}/playground?feature={feature}&strength=2")
        page.fill("input[name=max_tokens]", "120")
        page.click("#steer-run")
        page.wait_for_selector("#steered[data-done='1']", timeout=300_000)
        page.screenshot(path=str(args.out / "serve-playground.png"), full_page=True)
        browser.close()
    server.should_exit = True
    print(f"feature {feature}: {args.out / 'serve-feature.png'}, {args.out / 'serve-playground.png'}")


if __name__ == "__main__":
    main()
