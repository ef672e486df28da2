"""The contract between the server and its workers: queues, jobs, events, logs, heartbeats and Redis key names.

This is the only module of `worker` that `app` may import. Everything that crosses Redis is defined here, once.

Flow of one task attempt (DESIGN §4, §5):

1. The server enqueues `RUN_JOB` on `queue_name(pool)` with job id `job_id(task_id, attempt)` and one argument,
   `TaskJob.to_wire()`. arq runs it at most once (`max_tries=1`); the worker also claims `claim_key(...)` with
   SET NX so that a job delivered twice runs once.
2. The worker appends `Event`s to `EVENTS_STREAM` (`started`, then `finished`), each with the attempt number so that
   the server records them idempotently, and log lines to `log_stream(task_id, attempt)` (`LogLine`, tagged with the
   attempt, sequence numbers from 1 within the attempt, the stream capped to the job's `log_limit` newest lines).
   Each attempt has a stream of its own: an attempt that goes on after it was given up (`lost`) never mixes its
   lines with the next attempt's, and a reader of one attempt's stream never sees another's.
3. Cancel: the server sets `cancel_key(task_id)`; a worker checks it before it starts a task and polls it while the
   task runs.
4. Every worker writes a `Heartbeat` into the hash `WORKERS_KEY` (field: worker id) and the digests its store holds
   into `worker_digests_key(worker_id)`; the server reads both. The server asks one worker to act (prefetch) by
   pushing a `BlobRef` message onto `worker_inbox_key(worker_id)`.

Targets (DESIGN §11): a job whose `execution` is `targets` carries a `TargetPlan`, the hosts of the task's inventory
snapshot; the worker runs the template on each (at most `forks` at once) and reports each host's run with
`host_started` and `host_finished` events; its output lines carry the host's name. The task's own `finished` event
follows the last host's.

Secrets never cross Redis in plaintext: a job's password parameters and the logins of its hosts travel in `sealed`,
a token only the server and the workers can open (`worker.job_secrets`), with an expiry.

Versions: a job carries `protocol`. Version 2 gave each attempt its own log stream and each line its attempt;
version 3 moved password values out of `params` into `sealed` and added targets. Version 1 jobs (from a server not
upgraded yet) still run, writing to the task's one stream `legacy_log_stream`, as that server expects. A worker
refuses versions it does not know with a `finished` event saying so.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, get_args

from storage.digest import Digest

PROTOCOL_VERSION = 3
"""Carried by every job the server sends; a worker refuses versions it does not know."""
SUPPORTED_PROTOCOLS = (1, 2, 3)
"""The job versions this worker runs: the current one and the one before it (see the module docstring)."""

DEFAULT_POOL = "default"
QUEUE_PREFIX = "ahop:queue:"

PING_JOB = "ping"
"""A job that only reports who took it: proves a worker of a pool is consuming."""
RUN_JOB = "run_task"
"""Fetch a template by digest if needed, then run one attempt of a task."""

EVENTS_STREAM = "ahop:events"
"""Every worker's `Event`s, read by the server's consumer group `EVENTS_GROUP`."""
EVENTS_GROUP = "ahop-control"
WORKERS_KEY = "ahop:workers"
"""Hash: worker id → the JSON of its latest `Heartbeat`."""

ScriptType = Literal["shell", "python", "ansible"]
"""How a template's entry file runs: with bash, python3 or ansible-playbook."""
SCRIPT_TYPES: tuple[ScriptType, ...] = get_args(ScriptType)
FinalStatus = Literal["success", "failed", "timeout", "cancelled"]
"""How an attempt that a worker ran ended, as its `finished` event says."""
FINAL_STATUSES: tuple[FinalStatus, ...] = get_args(FinalStatus)
TaskStatusName = Literal["pending", "queued", "running", FinalStatus, "lost"]
"""Every status a task passes through (DESIGN §5); `lost` is the server's verdict on a worker that went silent."""
TASK_STATUSES: tuple[TaskStatusName, ...] = get_args(TaskStatusName)
Execution = Literal["worker", "targets"]
"""Where a template runs: on the worker itself, or on the hosts a task names (over SSH; Ansible from the worker)."""
EXECUTIONS: tuple[Execution, ...] = get_args(Execution)
HostFinalStatus = Literal["success", "failed", "unreachable", "timeout", "cancelled"]
"""How the run on one host ended, as its `host_finished` event says."""
HOST_FINAL_STATUSES: tuple[HostFinalStatus, ...] = get_args(HostFinalStatus)
HostStatusName = Literal["pending", "running", HostFinalStatus, "lost"]
"""Every status of one host's run; `lost` when the worker that ran it went silent."""
HOST_STATUSES: tuple[HostStatusName, ...] = get_args(HostStatusName)
RetryOutcome = Literal["failed", "timeout", "lost"]
"""The endings after which a template may give a task another attempt."""
RETRY_OUTCOMES: tuple[RetryOutcome, ...] = get_args(RetryOutcome)

_HEX64 = re.compile(r"[0-9a-f]{64}")


class ProtocolError(ValueError):
    """A message that does not follow this protocol (a newer server, a corrupt or foreign Redis entry)."""


def queue_name(pool: str) -> str:
    """The Redis queue that the workers of `pool` consume."""
    return QUEUE_PREFIX + pool


def job_id(task_id: str, attempt: int) -> str:
    """The arq job id of one attempt: deterministic, so enqueueing an attempt twice queues it once."""
    return f"ahop:task:{task_id}:{attempt}"


def claim_key(task_id: str, attempt: int) -> str:
    """SET NX by the worker that starts an attempt: a second delivery of the same job finds it taken."""
    return f"ahop:claim:{task_id}:{attempt}"


def cancel_key(task_id: str) -> str:
    """Exists while a cancel of the task is requested."""
    return f"ahop:cancel:{task_id}"


def log_stream(task_id: str, attempt: int) -> str:
    """The Redis stream of one attempt's output lines, until the server has stored them."""
    return f"ahop:logs:{task_id}:{attempt}"


def legacy_log_stream(task_id: str) -> str:
    """The one stream that protocol version 1 shared between all attempts of a task."""
    return f"ahop:logs:{task_id}"


def worker_digests_key(worker_id: str) -> str:
    """Set of the digests in a worker's store, each as its 64 hex characters (`Digest.hex`)."""
    return f"ahop:worker:{worker_id}:digests"


def worker_inbox_key(worker_id: str) -> str:
    """List of messages for one worker (JSON `BlobRef`s to prefetch), pushed by the server."""
    return f"ahop:worker:{worker_id}:inbox"


def parse_time(value: str) -> datetime:
    """A timestamp of this protocol (`Event.at`, `Heartbeat.at`, …: ISO 8601, UTC when no offset is written) as an
    aware datetime; a value that is not one raises ValueError."""
    moment = datetime.fromisoformat(value)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def serialize(value: dict[str, Any]) -> bytes:
    """Encode a job or its result. JSON rather than arq's default pickle: a Redis writer cannot run code on us.
    Keys keep their order: a job's params reach scripts as `--name value` arguments in the template's order."""
    return json.dumps(value, separators=(",", ":"), default=str).encode()


def deserialize(data: bytes) -> dict[str, Any]:
    """Decode what `serialize` wrote."""
    value = json.loads(data)
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object in a job, got {type(value).__name__}")
    return value


class BlobFigures(Protocol):
    """What is recorded of a stored blob, wherever it is read from: its row, its object's metadata, its packing."""

    @property
    def digest(self) -> Digest: ...
    @property
    def tar_size(self) -> int: ...
    @property
    def zst_size(self) -> int: ...
    @property
    def zst_sha256(self) -> str: ...
    @property
    def files(self) -> int: ...


@dataclass(frozen=True)
class BlobRef:
    """A stored blob as a worker needs to fetch and check it: the tar digest and the figures of its object."""

    digest: Digest
    """The sha256 of the canonical tar; on the wire, its 64 hex characters."""
    tar_size: int
    zst_size: int
    zst_sha256: str
    files: int

    @classmethod
    def of(cls, blob: BlobFigures) -> BlobRef:
        """The reference to a stored blob, from its recorded figures."""
        return cls(blob.digest, blob.tar_size, blob.zst_size, blob.zst_sha256, blob.files)

    def to_wire(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "digest": self.digest.hex}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> BlobRef:
        values = _pick(cls, data)
        if not all(
            isinstance(values[name], str) and _HEX64.fullmatch(values[name]) for name in ("digest", "zst_sha256")
        ):
            raise ProtocolError("a blob reference needs 64 lowercase hex characters for digest and zst_sha256")
        return cls(**{**values, "digest": Digest(values["digest"])})


@dataclass(frozen=True)
class JobHost:
    """One host of a task's inventory snapshot, as a worker needs it to log in and run there."""

    host_id: int
    name: str
    address: str
    port: int
    username: str
    host_keys: list[str]
    """The pinned host keys, OpenSSH lines `TYPE BASE64`: the only keys the host may show."""
    login: str
    """Which login of the job's sealed secrets (`JobSecrets.logins`) opens this host."""
    variables: dict[str, Any] = field(default_factory=dict)
    """The host's inventory variables (Ansible host vars)."""

    @classmethod
    def from_wire(cls, data: Any) -> JobHost:
        if not isinstance(data, dict):
            raise ProtocolError("a target host must be an object")
        host = cls(**_pick(cls, data))
        if not isinstance(host.host_keys, list) or not host.host_keys:
            raise ProtocolError(f"target host {host.name!r} needs its pinned host keys")
        return host


@dataclass(frozen=True)
class TargetPlan:
    """The hosts one attempt runs on, and how: `forks` hosts at once; the task fails when more than
    `max_fail_percentage` percent of its hosts did not succeed; the entry runs as root through sudo with
    `require_sudo`."""

    hosts: list[JobHost]
    forks: int = 5
    max_fail_percentage: int = 0
    require_sudo: bool = False

    @classmethod
    def from_wire(cls, data: Any) -> TargetPlan:
        if not isinstance(data, dict):
            raise ProtocolError("a job's targets must be an object")
        values = _pick(cls, data)
        if not isinstance(values["hosts"], list) or not values["hosts"]:
            raise ProtocolError("a job's targets need at least one host")
        plan = cls(**{**values, "hosts": [JobHost.from_wire(host) for host in values["hosts"]]})
        if not isinstance(plan.forks, int) or plan.forks < 1:
            raise ProtocolError(f"a job's forks must be a positive integer, not {plan.forks!r}")
        if not isinstance(plan.max_fail_percentage, int) or not 0 <= plan.max_fail_percentage <= 100:
            raise ProtocolError(f"max_fail_percentage must be 0 to 100, not {plan.max_fail_percentage!r}")
        return plan


@dataclass(frozen=True)
class TaskJob:
    """Everything a worker needs to run one attempt of a task (DESIGN §4). It never asks the database."""

    task_id: str
    attempt: int
    tenant_id: str
    template_code: str
    blob: BlobRef
    entry_file: str
    script_type: ScriptType
    params: dict[str, Any]
    """Validated and coerced by the server; passed to the script as file, environment and arguments. From version 3
    without the values of `secret_params`, which are in `sealed`."""
    secret_params: list[str] = field(default_factory=list)
    """Names of password parameters: their values are masked in the task's output."""
    sealed: str | None = None
    """The job's secrets (`worker.job_secrets.JobSecrets`: password values, host logins) sealed for the workers;
    None when it has none."""
    execution: Execution = "worker"
    targets: TargetPlan | None = None
    """The hosts to run on when `execution` is `targets`."""
    timeout: int = 3600
    """Seconds the script may run before it is stopped (status `timeout`)."""
    log_limit: int = 10_000
    """Most output lines kept in the log stream (the newest; older ones are dropped and the log marked truncated)."""
    protocol: int = PROTOCOL_VERSION

    def to_wire(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "blob": self.blob.to_wire()}

    def log_key(self) -> str:
        """The stream this attempt's output goes to: its own, or the task's shared one for a version 1 job."""
        return legacy_log_stream(self.task_id) if self.protocol == 1 else log_stream(self.task_id, self.attempt)

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> TaskJob:
        """Decode a job; a version this worker does not know, or a malformed job, raises `ProtocolError`."""
        version = data.get("protocol")
        if version not in SUPPORTED_PROTOCOLS or isinstance(version, bool):
            known = " and ".join(str(number) for number in SUPPORTED_PROTOCOLS)
            raise ProtocolError(f"job protocol version {version!r}; this worker speaks versions {known}")
        values = _pick(cls, data)
        blob = values.get("blob")
        if not isinstance(blob, dict):
            raise ProtocolError("a job needs a blob object")
        values["blob"] = BlobRef.from_wire(blob)
        if values.get("targets") is not None:
            values["targets"] = TargetPlan.from_wire(values["targets"])
        job = cls(**values)
        if job.execution not in EXECUTIONS:
            raise ProtocolError(f"execution {job.execution!r}; expected one of {', '.join(EXECUTIONS)}")
        if (job.execution == "targets") != (job.targets is not None):
            raise ProtocolError("a job has targets exactly when its execution is 'targets'")
        if job.sealed is not None and not isinstance(job.sealed, str):
            raise ProtocolError("a job's sealed secrets must be a token (text)")
        if job.script_type not in SCRIPT_TYPES:
            raise ProtocolError(f"script type {job.script_type!r}; expected one of {', '.join(SCRIPT_TYPES)}")
        if not isinstance(job.params, dict):
            raise ProtocolError("a job's params must be an object")
        return job


EventType = Literal["started", "finished", "host_started", "host_finished"]
EVENT_TYPES: tuple[EventType, ...] = get_args(EventType)


@dataclass(frozen=True)
class Event:
    """What a worker reports about an attempt. `started` carries the worker; `finished` the outcome.

    `finished` with status `failed` and `exit_code` None means the script never ran to an exit: `error` says why
    (an integrity error, a missing interpreter, a protocol version the worker does not know).

    `host_started` and `host_finished` report the run on one target host (`host`, the snapshot's name): the latter
    with a `HostFinalStatus`, the host's exit code and `digest`, the content the host checked before it ran.
    """

    type: EventType
    task_id: str
    attempt: int
    worker: str
    at: str
    """ISO 8601 UTC, the worker's clock."""
    status: FinalStatus | HostFinalStatus | None = None
    """`finished`: a `FinalStatus`; `host_finished`: a `HostFinalStatus`."""
    exit_code: int | None = None
    error: str | None = None
    log_lines: int = 0
    """Lines the script wrote in all (the stream keeps at most the job's `log_limit`)."""
    log_truncated: bool = False
    host: str | None = None
    """The target host of a `host_started` or `host_finished` event."""
    digest: str | None = None
    """`host_finished`: the 64 hex characters of the content the host verified and ran; None if it never got it."""

    def to_fields(self) -> dict[str, str]:
        """The fields of the stream entry (one JSON field keeps types intact)."""
        return {"event": json.dumps(dataclasses.asdict(self), separators=(",", ":"))}

    @classmethod
    def from_fields(cls, fields: dict[bytes, bytes] | dict[str, str]) -> Event:
        raw = {_text(k): _text(v) for k, v in fields.items()}.get("event")
        if raw is None:
            raise ProtocolError("an event stream entry needs an 'event' field")
        event = cls(**_pick(cls, _json_object(raw, "an event")))
        if event.type not in EVENT_TYPES:
            raise ProtocolError(f"unknown event type {event.type!r}")
        if event.type == "finished" and event.status not in FINAL_STATUSES:
            raise ProtocolError(f"a finished event needs a final status, got {event.status!r}")
        if event.type.startswith("host_") and not (isinstance(event.host, str) and event.host):
            raise ProtocolError(f"a {event.type} event needs its host")
        if event.type == "host_finished" and event.status not in HOST_FINAL_STATUSES:
            raise ProtocolError(f"a host_finished event needs a host's final status, got {event.status!r}")
        return event


@dataclass(frozen=True)
class LogLine:
    """One line of an attempt's output: `seq` counts from 1 within the attempt, `stream` is `stdout` or `stderr`,
    `attempt` the attempt that wrote it (0: not said, a version 1 worker's line), `host` the target host whose run
    printed it ("" on the worker itself). The server shows lines numbered over the whole task, with the same type."""

    seq: int
    stream: Literal["stdout", "stderr"]
    line: str
    attempt: int = 0
    host: str = ""

    def to_fields(self) -> dict[str, str]:
        fields = {"seq": str(self.seq), "stream": self.stream, "line": self.line, "attempt": str(self.attempt)}
        return {**fields, "host": self.host} if self.host else fields

    @classmethod
    def from_fields(cls, fields: dict[bytes, bytes] | dict[str, str]) -> LogLine:
        values = {_text(k): _text(v) for k, v in fields.items()}
        try:
            stream = values["stream"]
            if stream not in ("stdout", "stderr"):
                raise ProtocolError(f"unknown log stream {stream!r}")
            return cls(
                seq=int(values["seq"]),
                stream=stream,  # type: ignore[arg-type]
                line=values["line"],
                attempt=int(values.get("attempt", "0")),
                host=values.get("host", ""),
            )
        except (KeyError, ValueError) as error:
            raise ProtocolError(f"a malformed log entry: {error}") from None


@dataclass(frozen=True)
class Heartbeat:
    """A worker's state, written every few seconds into `WORKERS_KEY`."""

    id: str
    host: str
    pid: int
    pools: list[str]
    running: list[str]
    """Task ids this worker is running now."""
    cache_bytes: int
    cache_entries: int
    downloads: int
    """Blobs this worker process has fetched from S3 since it started."""
    version: str
    started_at: str
    at: str
    """ISO 8601 UTC, the worker's clock."""
    protocol: int = PROTOCOL_VERSION

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> Heartbeat:
        return cls(**_pick(cls, _json_object(raw, "a heartbeat")))


def _json_object(raw: str | bytes, what: str) -> dict[str, Any]:
    """The JSON object in `raw`; anything else raises `ProtocolError` naming `what` was read ("an event", …)."""
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ProtocolError(f"{what} is not JSON: {error}") from None
    if not isinstance(data, dict):
        raise ProtocolError(f"{what} must be a JSON object")
    return data


def _pick(cls: type[Any], data: dict[str, Any]) -> dict[str, Any]:
    """The fields of dataclass `cls` found in `data`; fields added by a newer peer are ignored, missing ones refused."""
    names = {f.name for f in dataclasses.fields(cls)}
    required = {
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    if missing := sorted(required - data.keys()):
        raise ProtocolError(f"{cls.__name__} is missing {', '.join(missing)}")
    return {key: value for key, value in data.items() if key in names}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
