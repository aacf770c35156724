"""DataMapPlot's offline cache from pinned npm packages; remote tags stripped from a saved map."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import platformdirs
import pytest

from thinklens.analysis.web_assets import (
    CSS_CACHE,
    CSS_FILES,
    FONT_CACHE,
    FONT_FAMILY,
    JS_CACHE,
    JS_FILES,
    ROBOTO_FACES,
    ensure_datamapplot_assets,
    offline_datamapplot,
    strip_remote_references,
)
from thinklens.errors import ThinklensError


def test_default_assets_hold_every_pinned_url_and_roboto():
    # The Makefile fills <sys.prefix>/share/thinklens/datamapplot at install time (or THINKLENS_ASSETS
    # names a filled directory), so the default resolution finds complete files and downloads nothing.
    directory = ensure_datamapplot_assets(show_progress=False)
    js = json.loads((directory / JS_CACHE).read_text())
    css = json.loads((directory / CSS_CACHE).read_text())
    fonts = json.loads((directory / FONT_CACHE).read_text())
    assert set(JS_FILES) <= set(js) and set(CSS_FILES) <= set(css)
    for entry in [*js.values(), *css.values()]:
        assert entry["name"] and base64.b64decode(entry["encoded_content"])
    # deck.gl's name is the one DataMapPlot's own cacher gives it: netloc + last path part, dots to _.
    assert js["https://unpkg.com/deck.gl@9.1/dist.min.js"]["name"] == "unpkg_com_dist_min_js"
    faces = fonts[FONT_FAMILY]
    assert [(face["style"], int(face["weight"])) for face in faces] == list(ROBOTO_FACES)
    for face in faces:
        assert face["type"] == "woff2" and face["unicode_range"].startswith("U+0000-00FF")
        assert base64.b64decode(face["content"])[:4] == b"wOF2"  # the woff2 signature


def test_strip_remote_references_keeps_everything_else():
    html = (
        "<head>\n"
        '<link rel="preconnect" href="https://fonts.googleapis.com" />\n'
        "<link\n  href=\"https://maxcdn.bootstrapcdn.com/font-awesome/4.6.3/css/font-awesome.min.css\"\n"
        '  rel="stylesheet"\n/>\n'
        '<link rel="icon" href="favicon.png">\n'
        '<script src="https://unpkg.com/d3@latest/dist/d3.min.js"></script>\n'
        '<script src="local.js"></script>\n'
        "<script>const docs = \"https://developer.mozilla.org/\";</script>\n"
        "</head>"
    )
    assert strip_remote_references(html) == (
        "<head>\n"
        '<link rel="icon" href="favicon.png">\n'
        '<script src="local.js"></script>\n'
        "<script>const docs = \"https://developer.mozilla.org/\";</script>\n"
        "</head>"
    )


@pytest.mark.parametrize("name", ["datamapplot", "assets"])
def test_offline_datamapplot_points_platformdirs_there_and_restores(tmp_path: Path, name: str):
    directory = tmp_path / name
    directory.mkdir()
    for cache in (JS_CACHE, CSS_CACHE, FONT_CACHE):
        (directory / cache).write_text("{}")
    before = os.environ.get("XDG_DATA_HOME")
    with pytest.raises(RuntimeError), offline_datamapplot(directory) as offline:
        assert Path(platformdirs.user_data_dir("datamapplot")).resolve() == directory.resolve()
        assert offline["offline_mode"] is True
        assert offline["offline_mode_js_data_file"] == str(directory.resolve() / JS_CACHE)
        raise RuntimeError("datamapplot failed")
    assert os.environ.get("XDG_DATA_HOME") == before


def test_offline_datamapplot_refuses_a_directory_without_the_files(tmp_path: Path):
    with pytest.raises(ThinklensError, match="ensure_datamapplot_assets"), offline_datamapplot(tmp_path):
        pass


def test_pins_cover_every_url_the_installed_datamapplot_embeds():
    from datamapplot.offline_mode_caching import DEFAULT_CSS_URLS, DEFAULT_URLS

    assert set(DEFAULT_URLS) <= set(JS_FILES) and set(DEFAULT_CSS_URLS) <= set(CSS_FILES)
