"""The web app in a real browser (Playwright driving Debian's Chromium): feature page, search, map
click-through, explain text, and the playground streaming both completions."""

from __future__ import annotations

import shutil

import pytest

from tests.browser import FLAGS, chromium_binary
from tests.server.conftest import live_server
from thinklens.analysis.featuremap import MapConfig
from thinklens.analysis.outputs import write_feature_map
from thinklens.server.app import load_served
from thinklens.server.config import ServeConfig

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def site(indexed_run, tmp_path_factory):
    run = tmp_path_factory.mktemp("site") / "tiny"
    shutil.copytree(indexed_run, run)
    write_feature_map(MapConfig(n_neighbors=5), run / "sae", run / "features.db", run / "map.html", run / "map.png",
                      run / "analysis" / "map.json")
    config = ServeConfig(runs=(run,), max_tokens=64)
    with live_server(config, load_served(config)) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=chromium_binary(),
                                              args=[flag for flag in FLAGS if flag != "--headless"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert not errors, errors  # no script error on any page


def test_feature_page_shades_examples_and_draws_histogram_and_minimap(site, page):
    page.goto(f"{site}/runs/tiny/features?sort=firing_count")
    page.click("#feature-list tr:nth-child(2) a")
    page.wait_for_selector("#top-examples .example")
    assert page.locator("#histogram rect").count() > 0
    shaded = page.eval_on_selector_all("#top-examples .tok", "spans => spans.filter(s => "
                                       "getComputedStyle(s).backgroundColor !== 'rgba(0, 0, 0, 0)').length")
    assert shaded > 0
    assert page.locator("#top-examples .tok.at").first.get_attribute("title")  # hover shows the value
    page.wait_for_selector("#minimap[data-drawn='1']", timeout=10_000)


def test_search_finds_features(site, page):
    page.goto(f"{site}/runs/tiny/features")
    total = int(page.inner_text("#total").split()[0].replace(",", ""))
    label = page.inner_text("#feature-list tr:nth-child(2) td:nth-child(2)")
    word = next(part for part in label.replace("'", " ").split() if part.isalnum())
    page.fill("input[name=q]", word)
    page.press("input[name=q]", "Enter")
    page.wait_for_url("**q=*")
    found = int(page.inner_text("#total").split()[0].replace(",", ""))
    assert 0 < found <= total and page.locator("#feature-list tr").count() > 1


def test_clicking_a_map_point_opens_its_feature_page(site, page):
    page.goto(f"{site}/runs/tiny/map")
    page.wait_for_selector("body[data-clickable='1']", timeout=60_000)
    find = """() => { const canvas = document.querySelector('canvas');
        const box = canvas.getBoundingClientRect();
        for (let y = 20; y < box.height - 20; y += 6) for (let x = 20; x < box.width - 20; x += 6) {
          const hit = datamap.deckgl.pickObject({x, y, radius: 0});  // as a click picks; the top-most: not a label
          const top = document.elementFromPoint(x + box.left, y + box.top);  // not under the title or a menu
          if (hit && hit.index >= 0 && hit.layer.id === 'dataPointLayer' && top === canvas)
            return {x: x + box.left, y: y + box.top, index: hit.index}; }
        return null; }"""
    spot = None
    for _ in range(40):  # SwiftShader may take a while to draw, and the view to settle: the same point twice
        first = page.evaluate(find)
        page.wait_for_timeout(1000)
        spot = page.evaluate(find)
        if first and spot and first == spot:
            break
        spot = None
    assert spot, "no map point could be picked"
    page.mouse.click(spot["x"], spot["y"])
    page.wait_for_url("**/runs/tiny/features/*", timeout=15_000)
    assert page.locator("h1").inner_text().startswith("Feature ")


def test_explain_text_shows_each_tokens_features(site, page):
    page.goto(f"{site}/runs/tiny/explain")
    page.fill("textarea[name=text]", "two plus two is four")
    page.click("#explain-form button[type=submit]")
    page.wait_for_selector("#explain-tokens .tok")
    page.locator("#explain-tokens .tok").first.click()
    page.wait_for_selector("#explain-detail table")


def test_playground_streams_baseline_and_steered_with_the_start_marked(site, page):
    page.goto(f"{site}/runs/tiny/playground?feature=0&strength=40")
    page.select_option("select[name=policy]", "first_token")
    page.fill("input[name=max_tokens]", "24")
    page.click("#steer-run")
    page.wait_for_selector("#steered[data-done='1']", timeout=60_000)
    assert page.inner_text("#baseline").strip() and page.inner_text("#steered").strip()
    assert int(page.get_attribute("#baseline", "data-streamed")) > 1  # token by token, not all at once
    assert int(page.get_attribute("#steered", "data-streamed")) > 1
    assert page.locator("#steered mark.steer-start").count() == 1
    assert page.locator("#baseline mark.steer-start").count() == 0
    assert "model=\"" in page.inner_text("#steer-model")


def test_a_goodfire_layout_database_opens_in_the_browser(indexed_run, tmp_path, page):
    from tests.server.test_release_ddb import make_release

    ddb, autointerp = make_release(indexed_run / "features.db", tmp_path)
    config = ServeConfig(ddb=ddb, autointerp=autointerp)
    with live_server(config, load_served(config)) as url:
        page.goto(f"{url}/runs/logic-1/features?sort=max_activation")
        page.click("#feature-list tr:nth-child(2) a")
        page.wait_for_selector("#top-examples .example .tok.at")
        assert "claude-3-7-sonnet-latest" in page.inner_text("section.labels")
        assert page.locator("#histogram rect").count() > 0
