"""`create_app(settings)`: wires controllers, dependencies and the connections they share."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.di import NamedDependency, Provide
from litestar.logging import LoggingConfig
from litestar.openapi import OpenAPIConfig
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession

from app.api.admin import AdminController
from app.api.answer_log import log_error_answer
from app.api.artifacts import ArtifactController
from app.api.auth import provide_principal, provide_session
from app.api.client_presence import client_presence
from app.api.credentials import CredentialController
from app.api.docs import SCHEMA_PATH, OfflineSwaggerPlugin
from app.api.errors import EXCEPTION_HANDLERS
from app.api.health import HealthController
from app.api.hosts import HostController
from app.api.metrics import MetricsController
from app.api.openapi import document_answers
from app.api.repositories import RepositoryController
from app.api.request_guard import refuse_unstorable_input
from app.api.tasks import TaskController
from app.api.templates import TemplateController
from app.api.workers import WorkerController
from app.control.loop import build_control_loop
from app.db.engine import create_engine, create_session_factory
from app.git.mirror import Mirrors
from app.maintenance.launcher import RunLauncher
from app.maintenance.start import build_maintenance
from app.metrics import ApiMetrics
from app.services.artifacts import Artifacts
from app.services.credentials import CredentialBox
from app.services.dispatch import Dispatcher, connect
from app.services.health import HealthProbe
from app.services.host_keys import HostKeyScanner
from app.services.hosts import Hosts
from app.services.imports import Importer
from app.services.repositories import Repositories, remove_stale_mirrors
from app.services.target_credentials import TargetCredentials
from app.services.tasks import Tasks
from app.services.template_changes import TemplateChanger
from app.services.templates import Templates
from app.services.workers import Workers
from app.settings import AppSettings
from storage.blobstore import BlobStore
from storage.canonical import Limits

API_TITLE = "ahop"

log = logging.getLogger("ahop.serve")


def create_app(settings: AppSettings) -> Litestar:
    """The API application. Connections open lazily and close when the application shuts down."""
    engine = create_engine(settings.database_url)
    redis = Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=settings.health_timeout,
        socket_timeout=settings.health_timeout,
    )
    # The probe's S3 client gives up quickly: a readiness check must answer within its own timeout.
    probe_location = dataclasses.replace(
        settings.s3_location(),
        connect_timeout=settings.health_timeout,
        read_timeout=settings.health_timeout,
        max_attempts=1,
    )
    health_probe = HealthProbe(engine, redis, BlobStore(probe_location), settings.health_timeout)
    session_factory = create_session_factory(engine)
    mirrors = Mirrors(settings.data_dir, settings.git_options())
    box = CredentialBox(settings.secret_key_list())

    store = BlobStore(settings.s3_location())
    limits = Limits(max_bytes=settings.max_template_bytes, max_files=settings.max_template_files)
    workers = Workers(
        redis,
        heartbeat_timeout=settings.heartbeat_timeout,
        forget_after=settings.worker_forget_after,
        prefetch_on_import=settings.prefetch_on_import,
    )
    dispatcher = Dispatcher(
        connect(settings.redis_url, settings.redis_timeout), box, settings.task_log_limit, settings.worker_seal()
    )
    metrics = ApiMetrics(session_factory, timeout=settings.health_timeout, git_load=mirrors.pool.load.figures)
    control = build_control_loop(settings, session_factory, dispatcher, workers, metrics=metrics)
    maintenance = build_maintenance(settings, engine, store)
    launcher = RunLauncher()

    def provide_repositories(db_session: NamedDependency[AsyncSession]) -> Repositories:
        return Repositories(db_session, mirrors, box, limits)

    def provide_target_credentials(db_session: NamedDependency[AsyncSession]) -> TargetCredentials:
        return TargetCredentials(db_session, box)

    def provide_hosts(
        db_session: NamedDependency[AsyncSession], target_credentials: NamedDependency[TargetCredentials]
    ) -> Hosts:
        return Hosts(db_session, target_credentials)

    def provide_host_key_scanner(hosts: NamedDependency[Hosts]) -> HostKeyScanner:
        return HostKeyScanner(hosts)

    def provide_importer(db_session: NamedDependency[AsyncSession]) -> Importer:
        return Importer(db_session, mirrors, box, store, limits, settings.data_dir / "tmp", metrics=metrics)

    def provide_templates(db_session: NamedDependency[AsyncSession]) -> Templates:
        return Templates(db_session)

    def provide_changer(
        db_session: NamedDependency[AsyncSession], importer: NamedDependency[Importer]
    ) -> TemplateChanger:
        return TemplateChanger(db_session, importer)

    def provide_artifacts(db_session: NamedDependency[AsyncSession]) -> Artifacts:
        return Artifacts(db_session, store, settings.data_dir / "tmp")

    def provide_tasks(db_session: NamedDependency[AsyncSession]) -> Tasks:
        return Tasks(
            db_session, dispatcher, session_factory, follow_block=min(1.0, settings.control_interval), metrics=metrics
        )

    async def sweep_mirrors() -> None:
        try:
            if removed := await remove_stale_mirrors(session_factory, mirrors):
                log.info("removed %d mirror(s) of repositories that no longer exist", removed)
        except Exception as exc:  # whatever stopped it (the database away), the next start looks again
            log.warning("could not look for mirrors of deleted repositories: %s: %s", type(exc).__name__, exc)

    @asynccontextmanager
    async def connections(_: Litestar) -> AsyncIterator[None]:
        if settings.control_loop:
            control.start()
        sweeping = asyncio.create_task(sweep_mirrors())
        try:
            yield
        finally:
            sweeping.cancel()
            await asyncio.gather(sweeping, return_exceptions=True)
            if killed := mirrors.close():
                log.warning(
                    "shutting down: killed %d git command(s) still running (pids %s)",
                    len(killed),
                    ", ".join(map(str, killed)),
                )
            await launcher.stop()
            await control.stop()
            await dispatcher.redis.aclose()
            await redis.aclose()
            await engine.dispose()

    app = Litestar(
        route_handlers=[
            HealthController,
            MetricsController,
            RepositoryController,
            CredentialController,
            HostController,
            TemplateController,
            ArtifactController,
            WorkerController,
            TaskController,
            AdminController,
        ],
        dependencies={
            "health_probe": Provide(lambda: health_probe, use_cache=True, sync_to_thread=False),
            "metrics": Provide(lambda: metrics, use_cache=True, sync_to_thread=False),
            "session_factory": Provide(lambda: session_factory, use_cache=True, sync_to_thread=False),
            "db_session": Provide(provide_session),
            "principal": Provide(provide_principal),
            "repositories": Provide(provide_repositories, sync_to_thread=False),
            "importer": Provide(provide_importer, sync_to_thread=False),
            "target_credentials": Provide(provide_target_credentials, sync_to_thread=False),
            "hosts": Provide(provide_hosts, sync_to_thread=False),
            "host_key_scanner": Provide(provide_host_key_scanner, sync_to_thread=False),
            "templates": Provide(provide_templates, sync_to_thread=False),
            "artifacts": Provide(provide_artifacts, sync_to_thread=False),
            "changer": Provide(provide_changer, sync_to_thread=False),
            "workers": Provide(lambda: workers, use_cache=True, sync_to_thread=False),
            "tasks": Provide(provide_tasks, sync_to_thread=False),
            "maintenance": Provide(lambda: maintenance, use_cache=True, sync_to_thread=False),
            "launcher": Provide(lambda: launcher, use_cache=True, sync_to_thread=False),
        },
        before_request=refuse_unstorable_input,
        middleware=[client_presence],
        exception_handlers=EXCEPTION_HANDLERS,
        # Every exception reaches `log_error_answer`, which keeps tracebacks for the 5xx an operator must look at.
        logging_config=LoggingConfig(log_exceptions="always", exception_logging_handler=log_error_answer),
        lifespan=[connections],
        openapi_config=OpenAPIConfig(
            title=API_TITLE,
            version="1",
            path=SCHEMA_PATH,
            render_plugins=[OfflineSwaggerPlugin(path="/swagger")],  # the first plugin also answers at /schema
        ),
    )
    return document_answers(app)
