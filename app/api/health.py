"""Liveness and readiness endpoints, unauthenticated, for load balancers and orchestrators."""

from __future__ import annotations

from litestar import Controller, Response, get
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.status_codes import HTTP_200_OK, HTTP_503_SERVICE_UNAVAILABLE

from app.services.health import HealthProbe


class HealthController(Controller):
    path = "/health"
    tags = ["health"]  # noqa: RUF012  (Litestar reads this class attribute)

    @get("/live", summary="The process is up")
    async def live(self) -> dict[str, str]:
        return {"status": "ok"}

    @get(
        "/ready",
        summary="Postgres, Redis and S3 all answer",
        cache=False,
        responses={
            503: ResponseSpec(
                dict[str, str],
                description="Some service did not answer; each check says which.",
                generate_examples=False,
            )
        },
    )
    async def ready(self, health_probe: NamedDependency[HealthProbe]) -> Response[dict[str, str]]:
        readiness = await health_probe.check()
        status = HTTP_200_OK if readiness.ready else HTTP_503_SERVICE_UNAVAILABLE
        return Response(readiness.checks, status_code=status)
