"""DataMapPlot's offline-mode cache, built from pinned npm packages instead of CDNs and Google Fonts.

`datamapplot.create_interactive_plot(..., offline_mode=True)` inlines its JavaScript, CSS and fonts
from three JSON files in `platformdirs.user_data_dir("datamapplot")`; its own cacher downloads them
from unpkg, cdn.datatables.net and Google Fonts. This module writes the same three files from the npm
registry (reachable where those CDNs are not), so a feature map renders with no network at all:

- every URL DataMapPlot may embed maps to one file of one exactly pinned npm package (`JS_FILES`,
  `CSS_FILES`), and each tarball must match the pinned `dist.integrity` (sha512) before use;
- Roboto comes from `@fontsource/roboto` (latin subset, woff2, the faces in `ROBOTO_FACES`);
- a fourth file, `thinklens-assets.json`, is written last: it records the pins the directory was
  built from, so a directory is complete exactly when that file matches the current pins;
- `python -m thinklens.analysis.web_assets` fills `<sys.prefix>/share/thinklens/datamapplot` at
  install time (the Makefile runs it), so tests and users never need the network afterwards.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import os
import re
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import platformdirs

from thinklens.errors import ThinklensError
from thinklens.files import atomic_path, write_json_atomic
from thinklens.models.loader import cache_dir

FORMAT_VERSION = 1
DEFAULT_REGISTRY = "https://registry.npmjs.org"
JS_CACHE = "datamapplot_js_encoded.json"
CSS_CACHE = "datamapplot_css_encoded.json"
FONT_CACHE = "datamapplot_fonts_encoded.json"
STAMP = "thinklens-assets.json"
TIMEOUT_S = 60.0


@dataclass(frozen=True)
class NpmFile:
    """One file inside one exactly pinned npm package."""

    package: str
    version: str
    path: str  # inside the tarball's top folder (usually `package/`)
    integrity: str  # the registry's dist.integrity for package@version


_DATATABLES = "1.13.8"
# Keys are the exact URLs DataMapPlot 0.7.3 embeds (offline_mode_caching.DEFAULT_URLS and
# DEFAULT_CSS_URLS; get_js_dependency_urls returns only these with the default cdn_url).
JS_FILES: dict[str, NpmFile] = {
    # Newest 9.1.x: DataMapPlot pins deck.gl 9.1 (9.2 culls region labels on first render).
    "https://unpkg.com/deck.gl@9.1/dist.min.js": NpmFile(
        "deck.gl", "9.1.15", "dist.min.js",
        "sha512-iJz8FelqonAetaNxaAlQcSmbgGJx+J1Q4KGUR5wy/4FtyTrolNrva0nLpoBWkRxMfC1dCUZNX9BFwopxoapkEA==",
    ),
    "https://unpkg.com/apache-arrow@latest/Arrow.es2015.min.js": NpmFile(
        "apache-arrow", "21.1.0", "Arrow.es2015.min.js",
        "sha512-kQrYLxhC+NTVVZ4CCzGF6L/uPVOzJmD1T3XgbiUnP7oTeVFOFgEUu6IKNwCDkpFoBVqDKQivlX4RUFqqnWFlEA==",
    ),
    "https://unpkg.com/d3@latest/dist/d3.min.js": NpmFile(
        "d3", "7.9.0", "dist/d3.min.js",
        "sha512-e1U46jVP+w7Iut8Jt8ri1YsPOvFpg46k+K8TpCb0P+zjCkjkPnV7WzfDJzMHy1LnA+wj5pLT1wjO901gLXeEhA==",
    ),
    "https://unpkg.com/jquery@3.7.1/dist/jquery.min.js": NpmFile(
        "jquery", "3.7.1", "dist/jquery.min.js",
        "sha512-m4avr8yL8kmFN8psrbFFFmB/If14iN5o9nw/NgnnM+kybDJpRsAynV2BsfpTYrTRysYUdADVD7CkUUizgkpLfg==",
    ),
    "https://unpkg.com/d3-cloud@1.2.7/build/d3.layout.cloud.js": NpmFile(
        "d3-cloud", "1.2.7", "build/d3.layout.cloud.js",
        "sha512-8TrgcgwRIpoZYQp7s3fGB7tATWfhckRb8KcVd1bOgqkNdkJRDGWfdSf4HkHHzZxSczwQJdSxvfPudwir5IAJ3w==",
    ),
    f"https://cdn.datatables.net/{_DATATABLES}/js/jquery.dataTables.min.js": NpmFile(
        "datatables.net", _DATATABLES, "js/jquery.dataTables.min.js",
        "sha512-2pDamr+GUwPTby2OgriVB9dR9ftFKD2AQyiuCXzZIiG4d9KkKFQ7gqPfNmG7uj9Tc5kDf+rGj86do4LAb/V71g==",
    ),
}
CSS_FILES: dict[str, NpmFile] = {
    f"https://cdn.datatables.net/{_DATATABLES}/css/jquery.dataTables.min.css": NpmFile(
        "datatables.net-dt", _DATATABLES, "css/jquery.dataTables.min.css",
        "sha512-/ZPzr1hQ+domerlg/MbcQHqeeqxK9fsZmpRs1YeKxsdfr+UyHQTUiiOO7RqekppSLc7MPqxGnzKkCX9vAgqm0w==",
    ),
}
ROBOTO = NpmFile(  # faces from files/roboto-latin-*.woff2, unicode ranges from the per-weight CSS
    "@fontsource/roboto", "5.2.9", "files",
    "sha512-ZTkyHiPk74B/aj8BZWbsxD5Yu+Lq+nR64eV4wirlrac2qXR7jYk2h6JlLYuOuoruTkGQWNw2fMuKNavw7/rg0w==",
)
# (style, weight); DataMapPlot draws cluster labels at weight 600 and the title at 400.
ROBOTO_FACES: tuple[tuple[str, int], ...] = (
    ("normal", 300), ("normal", 400), ("normal", 500), ("normal", 600), ("normal", 700), ("italic", 400),
)
FONT_FAMILY = "Roboto"
FONT_SUBSET = "latin"

_REMOTE_LINK = re.compile(r"""<link\b[^>]*?\bhref\s*=\s*["']?(?:https?:)?//[^>]*>[ \t]*\n?""", re.IGNORECASE)
_REMOTE_SCRIPT = re.compile(
    r"""<script\b[^>]*?\bsrc\s*=\s*["']?(?:https?:)?//[^>]*>\s*</script>[ \t]*\n?""", re.IGNORECASE
)


def ensure_datamapplot_assets(directory: Path | None = None, show_progress: bool = True) -> Path:
    """Return a directory holding DataMapPlot's three offline cache files, building them if missing.

    With no `directory`, the first of these wins: `$THINKLENS_ASSETS`; else
    `<sys.prefix>/share/thinklens/datamapplot` when it is already complete (the Makefile fills it);
    else `<cache>/datamapplot`, cache being `$THINKLENS_CACHE` or `~/.cache/thinklens`. Building
    downloads pinned npm tarballs from `$THINKLENS_NPM_REGISTRY` (default registry.npmjs.org).
    """
    target = Path(directory) if directory is not None else default_assets_dir()
    if not is_complete(target):
        build_assets(target, show_progress=show_progress)
    return target


def default_assets_dir() -> Path:
    """Where the assets live when no directory is given (see `ensure_datamapplot_assets`)."""
    if os.environ.get("THINKLENS_ASSETS"):
        return Path(os.environ["THINKLENS_ASSETS"]).expanduser()
    installed = install_assets_dir()
    return installed if is_complete(installed) else cache_dir() / "datamapplot"


def install_assets_dir() -> Path:
    """The directory `python -m thinklens.analysis.web_assets` fills: inside the environment."""
    return Path(sys.prefix) / "share" / "thinklens" / "datamapplot"


def is_complete(directory: Path) -> bool:
    """True when `directory` holds all three cache files, built from the current pins."""
    directory = Path(directory)
    stamp = directory / STAMP
    if not all((directory / name).is_file() for name in (JS_CACHE, CSS_CACHE, FONT_CACHE, STAMP)):
        return False
    try:
        return json.loads(stamp.read_text()) == _stamp()
    except (OSError, ValueError):
        return False


def build_assets(directory: Path, show_progress: bool = True) -> None:
    """Download the pinned packages and write the three cache files (then the stamp) into `directory`."""
    _check_pins_cover_datamapplot()
    directory = Path(directory)
    pins = [*JS_FILES.values(), *CSS_FILES.values(), ROBOTO]
    packages = sorted({(pin.package, pin.version, pin.integrity) for pin in pins})
    tarballs: dict[tuple[str, str], tarfile.TarFile] = {}
    for package, version, integrity in packages:
        if show_progress:
            print(f"datamapplot assets: downloading {package}@{version}", file=sys.stderr)
        data = download_tarball(package, version, integrity, directory)
        tarballs[package, version] = tarfile.open(fileobj=io.BytesIO(data), mode="r:gz")
    js = {url: _encoded_entry(url, _read_member(tarballs[pin.package, pin.version], pin.path))
          for url, pin in JS_FILES.items()}
    css = {url: _encoded_entry(url, _read_member(tarballs[pin.package, pin.version], pin.path))
           for url, pin in CSS_FILES.items()}
    fonts = {FONT_FAMILY: roboto_faces(tarballs[ROBOTO.package, ROBOTO.version])}
    for name, content in ((JS_CACHE, js), (CSS_CACHE, css), (FONT_CACHE, fonts)):
        with atomic_path(directory / name, confined=False) as temp:  # a cache beside no run
            temp.write_text(json.dumps(content))  # compact, as DataMapPlot's own cacher writes it
    write_json_atomic(directory / STAMP, _stamp(), confined=False)


def download_tarball(package: str, version: str, integrity: str, directory: Path | None = None) -> bytes:
    """Fetch `package@version`'s tarball from the npm registry and check it against `integrity`."""
    registry = os.environ.get("THINKLENS_NPM_REGISTRY", DEFAULT_REGISTRY).rstrip("/")
    meta_url = f"{registry}/{package.replace('/', '%2f')}/{version}"
    meta = json.loads(_fetch(meta_url, directory))
    dist = meta.get("dist", {})
    if dist.get("integrity") != integrity:
        raise ThinklensError(
            f"{meta_url} reports integrity {dist.get('integrity')!r} for {package}@{version}, pinned "
            f"{integrity!r}: point THINKLENS_NPM_REGISTRY at a registry that serves the published package"
        )
    data = _fetch(dist["tarball"], directory)
    algorithm, _, expected = integrity.partition("-")
    actual = base64.b64encode(hashlib.new(algorithm, data).digest()).decode()
    if actual != expected:
        raise ThinklensError(
            f"{dist['tarball']} does not match its pinned {algorithm} ({package}@{version}): the download "
            "was corrupted or tampered with; retry, or point THINKLENS_NPM_REGISTRY at a trusted registry"
        )
    return data


def roboto_faces(tarball: tarfile.TarFile) -> list[dict[str, str]]:
    """Roboto's font entries in DataMapPlot's format: style, weight, unicode_range, type, base64 content."""
    faces = []
    for style, weight in ROBOTO_FACES:
        stem = f"roboto-{FONT_SUBSET}-{weight}-{style}"
        woff2 = _read_member(tarball, f"files/{stem}.woff2")
        css = _read_member(tarball, f"{weight}.css" if style == "normal" else f"{weight}-italic.css").decode()
        faces.append({
            "style": style,
            "weight": str(weight),
            "unicode_range": _unicode_range(css, f"{stem}.woff2"),
            "type": "woff2",
            "content": base64.b64encode(woff2).decode(),
        })
    return faces


@contextmanager
def offline_datamapplot(directory: Path) -> Iterator[dict[str, Any]]:
    """Make DataMapPlot read its offline cache from `directory` while the block runs.

    DataMapPlot finds the CSS cache only through `platformdirs.user_data_dir("datamapplot")`, so
    XDG_DATA_HOME is pointed at a folder whose `datamapplot` entry is `directory` (its parent when
    it is named `datamapplot`, else a temporary folder with a link); where platformdirs ignores
    XDG_DATA_HOME (not Linux) `platformdirs.user_data_dir` is replaced for the block instead. Both
    are restored on exit, even after an exception. The block receives the keyword arguments to pass
    to `create_interactive_plot` (`offline_mode=True` and the explicit JS and font cache files):

        with offline_datamapplot(ensure_datamapplot_assets()) as offline:
            figure = datamapplot.create_interactive_plot(
                coords, labels, font_family="Roboto", custom_html=font_preload_html(), **offline
            )
        html = strip_remote_references(str(figure))
    """
    directory = Path(directory).resolve()
    if not all((directory / name).is_file() for name in (JS_CACHE, CSS_CACHE, FONT_CACHE)):
        # DataMapPlot would otherwise try to download them from CDNs.
        raise ThinklensError(f"{directory} lacks DataMapPlot's cache files: pass ensure_datamapplot_assets()")
    saved = os.environ.get("XDG_DATA_HOME")
    original_user_data_dir = platformdirs.user_data_dir
    with tempfile.TemporaryDirectory(prefix="thinklens-xdg-") as scratch:
        if directory.name == "datamapplot":
            data_home = directory.parent
        else:
            data_home = Path(scratch)
            (data_home / "datamapplot").symlink_to(directory, target_is_directory=True)
        os.environ["XDG_DATA_HOME"] = str(data_home)
        try:
            if Path(platformdirs.user_data_dir("datamapplot")).resolve() != directory:
                platformdirs.user_data_dir = _user_data_dir_with(directory, original_user_data_dir)
            yield {
                "offline_mode": True,
                "offline_mode_js_data_file": str(directory / JS_CACHE),
                "offline_mode_font_data_file": str(directory / FONT_CACHE),
            }
        finally:
            platformdirs.user_data_dir = original_user_data_dir
            if saved is None:
                os.environ.pop("XDG_DATA_HOME", None)
            else:
                os.environ["XDG_DATA_HOME"] = saved


def font_preload_html(family: str = FONT_FAMILY) -> str:
    """Hidden text in every cached face of `family`, to pass as `custom_html=` to DataMapPlot.

    A data-URL font face loads only once the page uses it; DataMapPlot waits for the 400 face alone,
    so deck.gl builds its label atlas (weight 600) before that face loads and labels fall back to a
    serif font. Text in each face at page load makes every face ready in time.
    """
    spans = "".join(
        f'<span style="font-family:{family};font-style:{style};font-weight:{weight}">Aa</span>'
        for style, weight in ROBOTO_FACES
    )
    hidden = "position:absolute;visibility:hidden;pointer-events:none"
    return f'<div aria-hidden="true" style="{hidden}">{spans}</div>'


def strip_remote_references(html: str) -> str:
    """Remove the `<link href="https://…">` and `<script src="https://…"></script>` tags of a page.

    DataMapPlot's template emits Google Fonts, bootstrap-theme and font-awesome links even in offline
    mode; without them the page fetches nothing. Everything else is kept byte for byte.
    """
    return _REMOTE_SCRIPT.sub("", _REMOTE_LINK.sub("", html))


def main(argv: list[str] | None = None) -> None:
    """`python -m thinklens.analysis.web_assets [--dir DIR]`: fill DIR (default: inside the environment)."""
    parser = argparse.ArgumentParser(description="Build DataMapPlot's offline cache from npm packages.")
    parser.add_argument(
        "--dir", type=Path, default=install_assets_dir(), help="directory to fill (default: %(default)s)"
    )
    parser.add_argument("--quiet", action="store_true", help="print only the directory")
    args = parser.parse_args(argv)
    try:
        directory = ensure_datamapplot_assets(args.dir, show_progress=not args.quiet)
    except ThinklensError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"datamapplot offline assets: {directory}")


def _fetch(url: str, directory: Path | None, attempts: int = 2) -> bytes:
    """GET `url` with a timeout, retrying once; a network failure is a ThinklensError naming the fix."""
    for attempt in range(attempts):
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
                return response.read()
        except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
            if attempt + 1 < attempts:
                time.sleep(2.0)
                continue
            where = directory if directory is not None else "DIR"
            raise ThinklensError(
                f"cannot download {url} ({getattr(error, 'reason', error)}): run `python -m "
                f"thinklens.analysis.web_assets --dir {where}` where the npm registry is reachable, and set "
                f"THINKLENS_ASSETS={where} (or THINKLENS_NPM_REGISTRY to a reachable mirror)"
            ) from error
    raise AssertionError("unreachable")


def _read_member(tarball: tarfile.TarFile, path: str) -> bytes:
    """The bytes of `path` inside an npm tarball, whatever its top folder is called."""
    for member in tarball.getmembers():
        if member.isfile() and member.name.split("/", 1)[-1] == path:
            handle = tarball.extractfile(member)
            if handle is not None:
                return handle.read()
    raise ThinklensError(f"an npm tarball has no file {path}: fix its pin in {__name__}")


def _encoded_entry(url: str, content: bytes) -> dict[str, str]:
    """A JS/CSS cache entry, named exactly as DataMapPlot's cacher names it."""
    parsed = urlparse(url)
    name = f"{parsed.netloc.replace('.', '_')}_{parsed.path.split('/')[-1].replace('.', '_')}"
    return {"encoded_content": base64.b64encode(content).decode(), "name": name}


def _unicode_range(css: str, font_file: str) -> str:
    """The unicode-range of the @font-face block in `css` whose src names `font_file` ('' if none)."""
    for block in re.findall(r"@font-face\s*{[^}]*}", css):
        if font_file in block:
            match = re.search(r"unicode-range:\s*([^;}]+)", block)
            return match.group(1).strip() if match else ""
    return ""


def _stamp() -> dict[str, Any]:
    """What a complete directory records: the format version and every pin it was built from."""
    return {
        "format_version": FORMAT_VERSION,
        "js": {url: asdict(pin) for url, pin in JS_FILES.items()},
        "css": {url: asdict(pin) for url, pin in CSS_FILES.items()},
        "fonts": {
            FONT_FAMILY: {**asdict(ROBOTO), "subset": FONT_SUBSET, "faces": [list(f) for f in ROBOTO_FACES]}
        },
    }


def _check_pins_cover_datamapplot() -> None:
    """Refuse to build when the installed DataMapPlot embeds a URL that has no pin."""
    # Imported here, not at the top: importing datamapplot takes ~9 s, and only building needs it.
    from datamapplot.offline_mode_caching import DEFAULT_CSS_URLS, DEFAULT_URLS

    missing = [url for url in DEFAULT_URLS if url not in JS_FILES]
    missing += [url for url in DEFAULT_CSS_URLS if url not in CSS_FILES]
    if missing:
        raise ThinklensError(
            f"the installed datamapplot embeds {', '.join(missing)} with no npm pin: add them to JS_FILES or "
            f"CSS_FILES in {__name__}, or install the datamapplot version the pins were made for (0.7.3)"
        )


def _user_data_dir_with(directory: Path, original: Callable[..., str]) -> Callable[..., str]:
    """`platformdirs.user_data_dir`, except that DataMapPlot's folder is `directory`."""

    def user_data_dir(appname: str | None = None, *args: Any, **kwargs: Any) -> str:
        return str(directory) if appname == "datamapplot" else original(appname, *args, **kwargs)

    return user_data_dir


if __name__ == "__main__":
    main()
