"""Start a BentoML service as a real server process on a free port, wait until it is ready, stop it."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

import httpx
import psutil

SERVICES: dict[str, str] = {
    "embedding": "services.embedding:EmbeddingService",
    "captioning": "services.captioning:CaptioningService",
    "vqa": "services.vqa:VQAService",
    "grounding": "services.grounding:GroundingService",
    "search": "services.search:SearchService",
    "explorer": "services.explorer:ExplorerService",
}
NO_GRPC = ("explorer",)  # serves HTTP only (the web page)


def grpc_port_variable(name: str) -> str:
    """The setting of a service's gRPC port: ``VLMOPS_<SERVICE>__GRPC_PORT``."""
    return f"VLMOPS_{name.upper()}__GRPC_PORT"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def service_target(name: str) -> str:
    try:
        return SERVICES[name]
    except KeyError:
        raise ValueError(f"unknown service {name!r} (known: {', '.join(SERVICES)})") from None


def serve_command(name: str, port: int, host: str = "127.0.0.1") -> list[str]:
    bentoml = Path(sys.executable).with_name("bentoml")
    return [str(bentoml), "serve", service_target(name), "--host", host, "--port", str(port)]


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll ``url`` until it answers 200; fail early when ``proc`` exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with code {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer 200 within {timeout_s:.0f} s")


def kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process and every descendant: BentoML's arbiter starts its API workers in sessions
    of their own, so killing the group alone would leave them running (and holding the index)."""
    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    for member in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    psutil.wait_procs(family, timeout=10)
    proc.wait()


def terminate_group(proc: subprocess.Popen[bytes] | None, timeout_s: float) -> None:
    """SIGTERM the process group (the arbiter stops its workers), then SIGKILL the whole tree if it has
    not exited within ``timeout_s``."""
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        kill_tree(proc)


class ServiceProcess:
    """``with ServiceProcess("embedding", env={...}) as svc: httpx.get(svc.url + "/readyz")``

    Each server gets a BentoML home of its own (a temporary directory, removed on stop) unless ``env``
    names one: ``bentoml serve`` empties ``$BENTOML_HOME/prometheus_multiproc_dir`` when it starts
    and exports every metrics file in it, so two servers sharing a home would wipe each other's
    metrics and each report the other's."""

    def __init__(
        self,
        name: str,
        port: int | None = None,
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
        ready_timeout_s: float = 180.0,
        host: str = "127.0.0.1",
        grpc_port: int | None = None,
    ) -> None:
        self.name = name
        self.host = host
        self._own_port = port is None
        self.port = port or free_port()
        self.env = {**os.environ, **(env or {})}
        # a port of its own unless ``env`` names one: two servers on one port would share it (SO_REUSEPORT)
        grpc_var = grpc_port_variable(name)
        if grpc_port is not None or grpc_var not in (env or {}):
            self.env[grpc_var] = str(grpc_port if grpc_port is not None else free_port())
        self.grpc_port = int(self.env[grpc_var])
        self._own_home: Path | None = None
        if "BENTOML_HOME" not in (env or {}):
            self._own_home = Path(tempfile.mkdtemp(prefix=f"bentoml-{name}-"))
            self.env["BENTOML_HOME"] = str(self._own_home)
        self.log_path = log_path
        self.ready_timeout_s = ready_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def grpc_target(self) -> str:
        """``host:port`` of its gRPC server (empty when it serves none: port 0)."""
        return f"127.0.0.1:{self.grpc_port}" if self.grpc_port else ""

    def start(self, attempts: int = 3) -> ServiceProcess:
        """Launch and wait until ready. A port this object chose that another process took between the
        choice and the bind (a client's ephemeral port, say) is chosen again, up to ``attempts`` times."""
        for attempt in range(1, attempts + 1):
            mark = self.log_path.stat().st_size if self.log_path is not None and self.log_path.is_file() else 0
            self.launch()
            try:
                self.wait_ready()
                return self
            except RuntimeError:
                if not (self._own_port and attempt < attempts and self._port_was_taken(mark)):
                    raise
                terminate_group(self.proc, 20)
                self.port = free_port()
        return self

    @staticmethod
    def start_together(procs: Sequence[ServiceProcess]) -> None:
        """Launch every one, then wait for each: their start-ups (a few seconds of imports and loading each)
        overlap. One whose port was taken meanwhile starts again on another; on any other failure all stop."""
        marks = [p.log_path.stat().st_size if p.log_path is not None and p.log_path.is_file() else 0 for p in procs]
        for proc in procs:
            proc.launch()
        try:
            for proc, mark in zip(procs, marks, strict=True):
                try:
                    proc.wait_ready()
                except RuntimeError:
                    if not (proc._own_port and proc._port_was_taken(mark)):
                        raise
                    terminate_group(proc.proc, 20)
                    proc.port = free_port()
                    proc.start()
        except BaseException:
            for proc in procs:
                proc.stop()
            raise

    def _port_was_taken(self, since: int) -> bool:
        """Whether the log written since byte ``since`` says the port was in use."""
        if self.log_path is None or not self.log_path.is_file():
            return False
        with self.log_path.open("rb") as fh:
            fh.seek(max(since, self.log_path.stat().st_size - 8192))
            return b"Address already in use" in fh.read()

    def launch(self) -> None:
        """Start the process without waiting for it to be ready."""
        if self._own_home is not None:
            self._own_home.mkdir(parents=True, exist_ok=True)
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            serve_command(self.name, self.port, self.host),
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_live(self) -> None:
        self._wait("livez")

    def wait_ready(self) -> None:
        self._wait("readyz")

    def _wait(self, probe: str) -> None:
        try:
            wait_http(f"{self.url}/{probe}", self.ready_timeout_s, self.proc)
        except TimeoutError as exc:
            self.stop()
            raise TimeoutError(
                f"{self.name} service not {probe} after {self.ready_timeout_s:.0f} s; see {self.log_path}"
            ) from exc
        except RuntimeError as exc:
            raise RuntimeError(f"{self.name} service: {exc}; see {self.log_path}") from exc

    def kill(self) -> None:
        """SIGKILL the server and its workers, as a node failure would."""
        if self.proc is not None and self.proc.poll() is None:
            kill_tree(self.proc)

    def stop(self) -> None:
        terminate_group(self.proc, 20)
        if self._own_home is not None:
            shutil.rmtree(self._own_home, ignore_errors=True)

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


@contextmanager
def running(*procs: ServiceProcess) -> Iterator[tuple[ServiceProcess, ...]]:
    """``with running(a, b) as (a, b):`` the services started side by side (:meth:`ServiceProcess.start_together`),
    stopped in reverse order after."""
    ServiceProcess.start_together(procs)
    try:
        yield procs
    finally:
        for proc in reversed(procs):
            proc.stop()


class WorkerProcess:
    """A Celery worker for the jobs as a real process (``with WorkerProcess(env=...)``); stopped with
    SIGTERM (a warm shutdown: the job in hand finishes or is redelivered)."""

    def __init__(self, env: dict[str, str] | None = None, log_path: Path | None = None) -> None:
        self.env = {**os.environ, **(env or {})}
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        celery = str(Path(sys.executable).with_name("celery"))
        cmd = [celery, "-A", "workers.app", "worker", "-P", "solo", "-c", "1", "--loglevel=INFO"]
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def stop(self, timeout_s: float = 60) -> None:
        terminate_group(self.proc, timeout_s)

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
