"""With the default settings a dead worker's tasks are `lost` within 30 s, and a Redis restart is still ridden out."""

from __future__ import annotations

from app.settings import AppSettings
from worker.settings import WorkerSettings


def default(settings: type[AppSettings] | type[WorkerSettings], name: str) -> float:
    value = settings.model_fields[name].default
    assert isinstance(value, float)
    return value


def test_by_default_a_dead_workers_task_is_lost_within_30_s_yet_a_redis_restart_is_ridden_out() -> None:
    timeout, grace = default(AppSettings, "heartbeat_timeout"), default(AppSettings, "lost_grace")
    interval = default(AppSettings, "control_interval")
    beat = default(WorkerSettings, "worker_heartbeat_interval")
    # The last heartbeat goes stale after the timeout, a reaper pass notices, the grace runs, a pass marks it lost.
    assert timeout + interval + grace + interval <= 30
    # After Redis restarted empty every live worker beats again within one interval: the grace outlasts it.
    assert grace >= 2 * beat
    # A worker is declared dead only after several heartbeats in a row went missing.
    assert timeout >= 3 * beat
