"""`GET /metrics`: the API's Prometheus metrics, unauthenticated as exporters are.

It exposes only aggregates (counts and sizes over every tenant, no names, codes or ids), yet like any exporter it
belongs behind the firewall or the scrape network: it is outside `/api/v1` and asks for no token.
"""

from __future__ import annotations

from litestar import Controller, Response, get
from litestar.di import NamedDependency

from app.metrics import CONTENT_TYPE, ApiMetrics


class MetricsController(Controller):
    path = "/metrics"

    @get("/", summary="Prometheus metrics", include_in_schema=False, cache=False)
    async def metrics(self, metrics: NamedDependency[ApiMetrics]) -> Response[bytes]:
        return Response(await metrics.exposition(), media_type=CONTENT_TYPE)
