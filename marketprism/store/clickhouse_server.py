"""A local ClickHouse 26.9 HTTP server, from the ``chdb-core`` package.

No modern clickhouse-server package exists for the machines this runs on, but chdb-core embeds clickhouse-local,
whose ``SYSTEM START LISTEN HTTP`` opens a real ClickHouse HTTP interface (the one clickhouse-connect speaks).
What shapes this module:

- the listener lives only as long as the clickhouse-local query that started it, so the server process keeps one
  long query (``SYSTEM START LISTEN HTTP; SELECT sleepEachRow(1) ...``) running in a background thread and ends
  it with ``KILL QUERY`` on SIGTERM;
- the listen host and port come from ``./config.xml``, read from the working directory when chDB's LocalServer
  starts, and that is process-wide state: so the server runs in its own process,
  ``python -m marketprism.store.clickhouse_server --host 127.0.0.1 --http-port PORT --path DATA_DIR``;
- LocalServer installs its own signal handlers as it starts, so ours go in after it is up (see :func:`serve`), and
  it gives open HTTP connections only ~5 s to close when the listener query ends, hence a short keep-alive.

:class:`LocalClickHouseServer` starts that process the way :class:`marketprism.bus.server.LocalNatsServer` starts
nats-server: a free (or checked) loopback port, its own session, ``PR_SET_PDEATHSIG``, readiness on ``/ping``,
SIGTERM then SIGKILL. With a data dir, what was written survives restarts: databases made by ``CREATE DATABASE``
are Atomic and their MergeTree tables (with their insert-deduplication log) persist, as do tables in ``default``
(clickhouse-local's Overlay database). Without one, a temporary dir is used and removed on stop. User ``default``
without password; loopback only.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import FrameType

from marketprism.bus.server import free_port, port_is_free
from marketprism.procs import die_with_parent

_LISTENER_MARKER = "marketprism_clickhouse_listener"
_LOG_NAME = "clickhouse-server.log"
READY_LINE = "clickhouse-server ready"
_KEEP_ALIVE_TIMEOUT_S = 2


class ClickHouseServerError(RuntimeError):
    pass


def _check_loopback(host: str) -> None:
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ClickHouseServerError(f"the local ClickHouse server listens on loopback only (an IP), not {host!r}")


def _http(host: str, port: int, query: str | None = None, path: str = "/", timeout: float = 2.0) -> str:
    """GET ``path``, or POST ``query`` (ClickHouse runs GET requests read-only)."""
    url_host = f"[{host}]" if ":" in host else host
    body = query.encode() if query is not None else None
    with urllib.request.urlopen(f"http://{url_host}:{port}{path}", data=body, timeout=timeout) as resp:
        return str(resp.read().decode())


def _ping(host: str, port: int) -> bool:
    try:
        return _http(host, port, path="/ping", timeout=1.0).strip() == "Ok."
    except (OSError, urllib.error.URLError):
        return False


def _read_from(path: Path, offset: int) -> str:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def _tail(path: Path, max_bytes: int = 4000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - max_bytes))
            return f.read().decode(errors="replace").strip()
    except OSError:
        return ""


class LocalClickHouseServer:
    """Runs ``python -m marketprism.store.clickhouse_server`` (a chDB HTTP server) as a child process.

    As with any ``PR_SET_PDEATHSIG`` child, "parent" means the thread that called :meth:`start`: start it from a
    thread that lives as long as the server should (the main thread), or it stops when that thread ends.
    """

    def __init__(self, data_dir: str | Path | None = None, host: str = "127.0.0.1", port: int = 0):
        _check_loopback(host)
        self.host = host
        self.port = port or free_port(host)
        self.data_dir: Path | None = Path(data_dir) if data_dir is not None else None
        self._temp_dir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        url_host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{url_host}:{self.port}"

    @property
    def log_path(self) -> Path | None:
        """The child's stdout and stderr: in the data dir, or in the temporary one while running."""
        base = self.data_dir or self._temp_dir
        return base / _LOG_NAME if base is not None else None

    def start(self, timeout_s: float = 60.0) -> LocalClickHouseServer:
        if self.proc is not None and self.proc.poll() is None:
            return self
        if not port_is_free(self.host, self.port):
            raise ClickHouseServerError(f"cannot start ClickHouse: {self.host}:{self.port} is already in use")
        if self.data_dir is None:
            self._temp_dir = Path(tempfile.mkdtemp(prefix="marketprism-clickhouse-"))
            data_dir = self._temp_dir
        else:
            data_dir = self.data_dir.resolve()
            data_dir.mkdir(parents=True, exist_ok=True)
        log_path = data_dir / _LOG_NAME
        cmd = [
            sys.executable,
            "-m",
            "marketprism.store.clickhouse_server",
            "--host",
            self.host,
            "--http-port",
            str(self.port),
            "--path",
            str(data_dir),
            "--ready-timeout",
            str(timeout_s),
            "--watch-parent",  # besides PR_SET_PDEATHSIG, which chDB's own SIGTERM handler may swallow
        ]
        offset = log_path.stat().st_size if log_path.exists() else 0  # this run's lines start here
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code, tail = self.proc.returncode, _tail(log_path)
                self._cleanup()
                raise ClickHouseServerError(f"ClickHouse server exited with {code} while starting; log tail:\n{tail}")
            # Ready = the ready line, printed once the child's signal handlers are in (a SIGTERM before that
            # would kill it mid-start); /ping alone answers a little earlier.
            if _ping(self.host, self.port) and READY_LINE in _read_from(log_path, offset):
                return self
            time.sleep(0.05)
        tail = _tail(log_path)
        self.stop(kill=True)
        raise ClickHouseServerError(
            f"ClickHouse did not answer on {self.url}/ping within {timeout_s}s; log tail:\n{tail}"
        )

    def stop(self, kill: bool = False, timeout_s: float = 20.0) -> None:
        """SIGTERM (the server ends its listener query and exits), SIGKILL if that takes over ``timeout_s``."""
        proc, self.proc = self.proc, None
        try:
            if proc is None or proc.poll() is not None:
                return
            proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        finally:
            self._cleanup()

    def kill(self) -> None:
        self.stop(kill=True)

    def _cleanup(self) -> None:
        self.proc = None
        temp, self._temp_dir = self._temp_dir, None
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)

    def __enter__(self) -> LocalClickHouseServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def default_data_dir() -> Path:
    return Path(os.environ.get("MARKETPRISM_DATA_DIR", "data")) / "clickhouse"


# --- the server process -------------------------------------------------------------------------------------------


def _write_config(workdir: Path, host: str, http_port: int) -> None:  # pragma: no cover - server process
    # keep_alive_timeout: when the listener query ends, LocalServer waits for open HTTP connections, and a
    # client's idle keep-alive connection (30 s by default) outlasts its ~5 s grace, after which it calls
    # _exit(1). 2 s keeps a stop quick and clean; clients just reconnect after 2 s idle (cheap on loopback).
    (workdir / "config.xml").write_text(
        f"<clickhouse>\n"
        f"    <listen_host>{host}</listen_host>\n"
        f"    <http_port>{http_port}</http_port>\n"
        f"    <keep_alive_timeout>{_KEEP_ALIVE_TIMEOUT_S}</keep_alive_timeout>\n"
        f"</clickhouse>\n"
    )


def serve(  # pragma: no cover - runs in the server process, a child of LocalClickHouseServer
    host: str, http_port: int, path: str | None, ready_timeout_s: float = 60.0, watch_parent: bool = False
) -> int:
    """Serve until SIGTERM/SIGINT/SIGHUP (or, with ``watch_parent``, until the parent process is gone).

    Returns the exit code: 0 after a requested stop, 1 if the server failed or its listener query ended by itself,
    2 if the port is taken.
    """
    _check_loopback(host)
    parent = os.getppid()
    if not port_is_free(host, http_port):
        print(f"clickhouse-server: {host}:{http_port} is already in use", file=sys.stderr, flush=True)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="marketprism-clickhouse-cwd-"))
    try:
        data = Path(path).resolve() if path else workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        _write_config(workdir, host, http_port)

        import chdb  # imported before our chdir: chdb changes and restores the cwd while importing
        from chdb import _chdb

        os.chdir(workdir)  # chDB's LocalServer reads ./config.xml when it starts
        query = (
            "SYSTEM START LISTEN HTTP; "
            f"SELECT /* {_LISTENER_MARKER} */ sleepEachRow(1) FROM numbers(1000000000) "
            "SETTINGS function_sleep_max_microseconds_per_block = 0, max_block_size = 1 FORMAT Null"
        )
        outcome: dict[str, object] = {}

        def run() -> None:
            # The output format given here becomes the HTTP interface's default one; TabSeparated is a real
            # server's default (clickhouse-connect reads `SELECT version(), timezone()` as TSV).
            try:
                outcome["result"] = _chdb.query(query, "TabSeparated", path=str(data))  # type: ignore[attr-defined]
            except BaseException as e:
                outcome["error"] = e

        def orphaned() -> bool:
            return watch_parent and os.getppid() != parent

        listener = threading.Thread(target=run, name="clickhouse-listener", daemon=True)
        listener.start()
        deadline = time.monotonic() + ready_timeout_s
        while not _ping(host, http_port):
            if not listener.is_alive() or orphaned() or time.monotonic() > deadline:
                print(f"clickhouse-server: the HTTP listener did not come up: {outcome}", file=sys.stderr, flush=True)
                return 1
            time.sleep(0.05)

        # Only now: starting up, chDB's LocalServer installs its own handlers for SIGTERM and friends, which do
        # not stop the process; installed before, ours would be replaced (seen: SIGTERM then did nothing). Until
        # here, a signal gets the default (exit) or ClickHouse's handling, and ``orphaned()`` covers the parent.
        stop = threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, on_signal)
        version = _http(host, http_port, "SELECT version()").strip()
        print(
            f"{READY_LINE}: ClickHouse {version} (chdb {chdb.__version__}) http://{host}:{http_port} data={data} "
            f"pid={os.getpid()}",
            flush=True,
        )
        while not stop.is_set() and listener.is_alive() and not orphaned():
            stop.wait(0.5)
        requested = stop.is_set() or orphaned()
        if listener.is_alive():  # end the listener query: LocalServer then closes its listeners
            kill = f"KILL QUERY WHERE query LIKE '%{_LISTENER_MARKER}%' AND query NOT LIKE '%KILL QUERY%'"
            try:
                _http(host, http_port, kill, timeout=10.0)
            except OSError as e:
                print(f"clickhouse-server: KILL QUERY failed: {e}", file=sys.stderr, flush=True)
            listener.join(15.0)
        else:
            print(f"clickhouse-server: the listener query ended: {outcome}", file=sys.stderr, flush=True)
        print("clickhouse-server: stopped", flush=True)
        return 0 if requested else 1
    finally:
        os.chdir("/")
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:  # pragma: no cover - server process
    parser = argparse.ArgumentParser(description="Serve ClickHouse's HTTP interface (chDB) on loopback.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--http-port", type=int, default=8123)
    parser.add_argument("--path", default=None, help="persistent data dir (default: a temporary one)")
    parser.add_argument("--ready-timeout", type=float, default=60.0)
    parser.add_argument("--watch-parent", action="store_true", help="stop when the parent process goes away")
    args = parser.parse_args(argv)
    try:
        code = serve(args.host, args.http_port, args.path, args.ready_timeout, args.watch_parent)
    except ClickHouseServerError as e:
        print(f"clickhouse-server: {e}", file=sys.stderr, flush=True)
        code = 2
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # LocalServer is shut down already: skip the interpreter and chDB global teardown


if __name__ == "__main__":
    main()
