"""The documentation pages render offline: everything they load comes from the API itself and answers."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

DOCS_PAGES = ["/schema", "/schema/swagger", "/schema/oauth2-redirect.html"]
# An absolute or scheme-relative URL anywhere in a page's inline scripts (its configuration, the embedded spec).
INLINE_URL = re.compile(r"""(?:https?:)?//[^\s'"`<>)]+""")
PLAUSIBLE_TYPES = {".js": "javascript", ".css": "text/css", ".png": "image/png", ".svg": "image/svg"}


class _References(HTMLParser):
    """Collects what a page loads: script and link targets, image sources, and URLs named in inline scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self._in_inline_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        for attribute in ("src", "href"):
            if (value := named.get(attribute)) and tag in {"script", "link", "img"}:
                self.urls.append(value)
        self._in_inline_script = tag == "script" and not named.get("src")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_inline_script = False

    def handle_data(self, data: str) -> None:
        if self._in_inline_script:
            self.urls.extend(INLINE_URL.findall(data))


@pytest.mark.parametrize("page", DOCS_PAGES)
async def test_every_asset_of_a_docs_page_is_served_by_the_api(client: AsyncTestClient[Litestar], page: str) -> None:
    response = await client.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    references = _References()
    references.feed(response.text)
    base = str(client.base_url)
    here = urlsplit(base)

    for reference in references.urls:
        url = urlsplit(urljoin(base + page, reference))
        assert (url.scheme, url.netloc) == (here.scheme, here.netloc), f"{page} loads {reference} from elsewhere"
        asset = await client.get(url.path)
        assert asset.status_code == 200, f"{page} loads {reference}, which answers {asset.status_code}"
        suffix = url.path[url.path.rfind(".") :]
        if suffix in PLAUSIBLE_TYPES:
            assert PLAUSIBLE_TYPES[suffix] in asset.headers["content-type"], (reference, asset.headers)
            assert asset.content, f"{reference} is empty"


async def test_the_swagger_page_loads_swagger_ui_itself(client: AsyncTestClient[Litestar]) -> None:
    references = _References()
    references.feed((await client.get("/schema/swagger")).text)
    scripts = [url for url in references.urls if url.endswith(".js")]

    assert any(url.endswith("/swagger-ui-bundle.js") for url in scripts), references.urls
    bundle = await client.get(next(url for url in scripts if url.endswith("/swagger-ui-bundle.js")))
    assert b"SwaggerUIBundle" in bundle.content
