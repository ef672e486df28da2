"""The API's documentation pages (`/schema`, `/schema/swagger`), served with their assets so they render offline.

Swagger UI's files come from the `flask-swagger-ui` wheel, pinned in `pyproject.toml`; its version is the version of
Swagger UI it ships, and it follows Swagger UI's releases. The package only carries the files here: nothing imports
it (so Flask is never loaded), the directory is found from its import spec and served by a static files router
under the schema path, at a URL that names the version, so a browser may cache the files for good.

Swagger UI is the only renderer: the one maintained wheel that ships Scalar's bundle (`star-openapi-scalar`) depends
on the `star-openapi` framework, whose `uvicorn[standard]` would swap this server's event loop and HTTP parser.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path
from typing import Any

from litestar import Router
from litestar.datastructures import CacheControlHeader
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.static_files import create_static_files_router

SCHEMA_PATH = "/schema"
SWAGGER_UI_DISTRIBUTION = "flask-swagger-ui"
_SWAGGER_UI_MODULE = "flask_swagger_ui"
# The files never change under one URL: the version is in it.
_FOREVER = CacheControlHeader(max_age=365 * 86400, public=True)


def swagger_ui_files() -> Path:
    """The directory of Swagger UI's dist files (swagger-ui-bundle.js, swagger-ui.css, …) in the installed wheel."""
    spec = importlib.util.find_spec(_SWAGGER_UI_MODULE)  # finds a top-level package without running it
    if spec is None or spec.origin is None:
        raise RuntimeError(f"the {SWAGGER_UI_DISTRIBUTION} package, which ships Swagger UI's files, is not installed")
    return Path(spec.origin).parent / "dist"


class OfflineSwaggerPlugin(SwaggerRenderPlugin):
    """Swagger UI whose page loads its script, style and icon from this server, never from a CDN."""

    def __init__(self, *, path: str = "/swagger", **kwargs: Any) -> None:
        version = importlib.metadata.version(SWAGGER_UI_DISTRIBUTION)
        self.assets_route = f"/assets/swagger-ui-{version}"
        base = f"{SCHEMA_PATH}{self.assets_route}"
        super().__init__(
            path=path,
            js_url=f"{base}/swagger-ui-bundle.js",
            css_url=f"{base}/swagger-ui.css",
            standalone_preset_js_url=f"{base}/swagger-ui-standalone-preset.js",
            favicon=f"<link rel='icon' type='image/png' href='{base}/favicon-32x32.png'>",
            **kwargs,
        )

    def receive_router(self, router: Router) -> None:
        """Add the OAuth2 redirect page (as Swagger UI's plugin does) and the static files the page loads."""
        super().receive_router(router)
        router.register(
            create_static_files_router(
                path=self.assets_route,
                directories=[swagger_ui_files()],
                name="swagger-ui-assets",
                cache_control=_FOREVER,
                include_in_schema=False,
            )
        )
