"""Local model servers a run starts itself: ``transformers serve`` (or any command answering
``GET /health``) on a free 127.0.0.1 port, for an endpoint configured with ``serve: <folder>``.

- Started on first use (a fully cached run starts nothing), one per (folder, command, device,
  threads), shared by every client of the run; ``serving()`` bounds their life: everything
  started inside it is stopped when it ends - normally, on an exception and on Ctrl-C (the
  server runs in its own session, so the terminal's SIGINT reaches only the run, which then
  stops it). A client outside any ``serving()`` block starts and stops its own.
- Bounded even when the run dies without cleaning up: on Linux the server is started through
  a two-line launcher that asks the kernel to send it SIGTERM when the thread that started it
  dies (``PR_SET_PDEATHSIG``; a dedicated thread of the pool starts every server, so that
  happens only when the process does), and an ``atexit`` hook stops what is left.
- Ready means ``GET /health`` answers 200; a server that exits or does not answer within
  ``startup_timeout_s`` is an error quoting its last log lines. Stopping is SIGTERM (requests in
  flight finish; ``transformers serve`` takes 2-4 s), then SIGKILL after ``stop_timeout_s``.
- ``transformers serve`` pins the model it was started with: requests must name exactly that
  folder path, so ``Served.model`` is what clients send. Its manners, measured: requests are
  served one at a time; logprobs, response_format and n are accepted and ignored; unknown
  fields are a 422; a reply is up to 1024 tokens unless max_tokens says less.

Only the folder's content digest identifies a served model (``Served.digest``): the port and
the path never enter a cache key.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from models import llm_hub
from models.lifetime import free_port, tied_to_this_process
from models.settings import FolderDigests, ServeSettings

HOST = "127.0.0.1"
DEFAULT_COMMAND = (
    sys.executable,
    "-m",
    "transformers.cli.transformers",
    "serve",
    "{model}",
    "--device",
    "{device}",
    "--host",
    "{host}",
    "--port",
    "{port}",
    "--log-level",
    "error",
)
# Sets PR_SET_PDEATHSIG (1) on itself, gives up if its parent is already gone, then becomes the
# server (the setting survives exec): the server dies with the run even when nothing cleans up.
LOG_TAIL_LINES = 25
PORT_TRIES = 3


class ServerError(RuntimeError):
    """A served endpoint that could not be started (the message quotes the server's log)."""


@dataclass(frozen=True)
class Served:
    base_url: str  # http://127.0.0.1:<port>/v1
    model: str  # the name requests send: the folder path the server was started with
    digest: str  # the folder's content digest: what identifies the model in caches


class ManagedServer:
    """One server process: started, waited for, stopped."""

    def __init__(self, serve: ServeSettings, launch: concurrent.futures.Executor | None = None):
        self.serve = serve
        self.model = str(Path(serve.model).resolve())
        self._launch = launch
        self.process: subprocess.Popen[bytes] | None = None
        self.port: int | None = None
        self.log_path: Path | None = None

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}/v1"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def command(self, port: int) -> list[str]:
        values = {"model": self.model, "host": HOST, "port": str(port), "device": self.serve.device}
        return [part.format(**values) for part in (self.serve.command or DEFAULT_COMMAND)]

    def argv(self, port: int) -> list[str]:
        return tied_to_this_process(self.command(port))

    def start(self) -> None:
        if not Path(self.model).is_dir():
            raise ServerError(f"serve: model folder {self.model} does not exist")
        for attempt in range(PORT_TRIES):
            self._spawn(free_port())
            try:
                self._wait_healthy()
                return
            except ServerError:
                tail = self.log_tail()
                self.stop(keep_log=True)
                # Another process took the port between the probe and the server's bind: a new one.
                if "address already in use" not in tail.lower() or attempt == PORT_TRIES - 1:
                    raise

    def _spawn(self, port: int) -> None:
        self.port = port
        handle, name = tempfile.mkstemp(prefix=f"mmedpo-serve-{Path(self.model).name}-{port}-", suffix=".log")
        self.log_path = Path(name)
        env = {
            **os.environ,
            "OMP_NUM_THREADS": str(self.serve.threads),
            "MKL_NUM_THREADS": str(self.serve.threads),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
        popen = lambda: subprocess.Popen(  # noqa: E731
            self.argv(port),
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # Ctrl-C in the terminal reaches the run, which stops the server
        )
        try:
            self.process = self._launch.submit(popen).result() if self._launch is not None else popen()
        finally:
            os.close(handle)

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.serve.startup_timeout_s
        url = f"http://{HOST}:{self.port}/health"
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise ServerError(self._failure(f"the server exited with status {self.process.returncode}"))
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise ServerError(
                    self._failure(f"GET /health did not answer within {self.serve.startup_timeout_s:g} s")
                )
            time.sleep(0.25)

    def _failure(self, why: str) -> str:
        return (
            f"serve {self.model} on port {self.port}: {why}; command: {' '.join(self.command(self.port or 0))}\n"
            f"last lines of its log ({self.log_path}):\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return "(no log)"
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:]) or "(empty log)"

    def stop(self, keep_log: bool = False) -> int | None:
        """SIGTERM, then SIGKILL after stop_timeout_s; the exit status (None if never started)."""
        process, status = self.process, None
        if process is not None:
            if process.poll() is None:
                _signal_group(process, signal.SIGTERM)
                try:
                    process.wait(timeout=self.serve.stop_timeout_s)
                except subprocess.TimeoutExpired:
                    _signal_group(process, signal.SIGKILL)
                    process.wait(timeout=30)
            status = process.returncode
        if self.port is not None:
            llm_hub.forget(self.base_url)
        if self.log_path is not None and not keep_log:
            self.log_path.unlink(missing_ok=True)
        return status


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    try:
        os.killpg(process.pid, signum)  # its own session: the server and anything it started
    except (ProcessLookupError, PermissionError):
        try:
            process.send_signal(signum)
        except ProcessLookupError:
            pass


class ServerPool:
    """The servers of one run, started on first use and stopped together."""

    def __init__(self, memo: FolderDigests | None = None):
        self._memo = memo
        self._lock = threading.Lock()
        self._servers: dict[tuple, tuple[ManagedServer, Served]] = {}
        # Every server is started from this one thread, which lives until close(): the kernel's
        # parent-death signal fires when the starting thread ends, so it must not end earlier.
        self._launch = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="mmedpo-serve")
        self.closed = False
        _LIVE.add(self)

    def served(self, serve: ServeSettings) -> Served:
        """The running server for ``serve`` (started now if it is not yet)."""
        key = (str(Path(serve.model).resolve()), tuple(serve.command or ()), serve.device, serve.threads)
        with self._lock:
            if self.closed:
                raise ServerError("serve: the run's servers were already stopped")
            if key in self._servers:
                server, served = self._servers[key]
                if not server.alive:
                    raise ServerError(server._failure("the server stopped during the run"))
                return served
            server = ManagedServer(serve, self._launch)
            server.start()
            folder = Path(server.model)
            digest = self._memo.tree(folder) if self._memo is not None else folder_digest(folder)
            served = Served(server.base_url, server.model, digest)
            self._servers[key] = (server, served)
            return served

    @property
    def servers(self) -> list[ManagedServer]:
        return [server for server, _ in self._servers.values()]

    def close(self) -> None:
        with self._lock:
            self.closed = True
            servers, self._servers = self.servers, {}
        for server in servers:
            server.stop()
        self._launch.shutdown(wait=False)
        _LIVE.discard(self)


_LIVE: set[ServerPool] = set()
_ACTIVE: list[ServerPool] = []
_ACTIVE_LOCK = threading.Lock()


@atexit.register
def _stop_leftovers() -> None:
    for pool in list(_LIVE):
        pool.close()


def folder_digest(root: Path) -> str:
    """A served folder's content hash where no run's store remembers digests (a client or pool
    used on its own): it scopes the response cache only and is in no artifact's key."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\x00")
        with open(path, "rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()


@contextmanager
def serving(memo: FolderDigests | None = None) -> Iterator[ServerPool]:
    """Served endpoints used inside this block share its servers, stopped when it ends.

    Nested blocks share the outermost pool. ``memo``: the run's store digests, which remember
    the served folders' digests (a stat per file on later runs, not a read).
    """
    with _ACTIVE_LOCK:
        outer = _ACTIVE[0] if _ACTIVE else None
    if outer is not None:
        yield outer
        return
    pool = ServerPool(memo)
    with _ACTIVE_LOCK:
        _ACTIVE.append(pool)
    try:
        yield pool
    finally:
        with _ACTIVE_LOCK:
            _ACTIVE.remove(pool)
        pool.close()


def active_pool() -> ServerPool | None:
    with _ACTIVE_LOCK:
        return _ACTIVE[0] if _ACTIVE else None
