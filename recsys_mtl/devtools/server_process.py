"""Run `recsys-mtl serve` as a child process on a free loopback port and wait until it is ready
(the demo, the serving and nightly end-to-end tests and the serving benchmarks use this;
production runs the command directly)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx

from recsys_mtl.distributed import free_port

__all__ = ["ServerProcess", "free_port", "running_server", "serve"]

T = TypeVar("T")


class ServerProcess:
    """A `recsys-mtl serve` child process on a loopback port, its output in `log_path`."""

    def __init__(
        self,
        registry: str | Path,
        config: str | Path,
        log_path: str | Path,
        port: int | None = None,
        env: Mapping[str, str] | None = None,
        workers: int | None = 1,
    ) -> None:
        """`workers`: `--workers`; 1 by default, so tests and benchmarks see one process whatever
        the machine's CPUs; None: the command's own default (as the demo and production run)."""
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_path)
        cmd = [
            sys.executable, "-m", "recsys_mtl.cli", "serve",
            "--registry", str(registry), "--config", str(config), "--port", str(self.port),
        ]  # fmt: skip
        if workers is not None:
            cmd += ["--workers", str(workers)]
        with open(self.log_path, "a") as logf:
            self.proc = subprocess.Popen(
                cmd,
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
            )
        self.client = httpx.Client(base_url=self.url, timeout=60)

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def wait_ready(self, timeout: float = 180) -> None:
        """Until GET /readyz answers 200 (RuntimeError if the process exits first)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            try:
                if self.client.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"the server was not ready in {timeout:.0f}s:\n{self.log()[-4000:]}")

    def wait_for(self, pred: Callable[[], T], timeout: float = 60, what: str = "condition") -> T:
        deadline = time.time() + timeout
        while time.time() < deadline:
            got = pred()
            if got:
                return got
            time.sleep(0.2)
        raise TimeoutError(f"timed out waiting for {what}:\n{self.log()[-4000:]}")

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM (uvicorn drains and shuts down), SIGKILL if it does not exit in `timeout`."""
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@contextmanager
def running_server(
    registry: str | Path, config: str | Path, log_path: str | Path, **kw: Any
) -> Iterator[ServerProcess]:
    server = ServerProcess(registry, config, log_path, **kw)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@contextmanager
def serve(registry: Path, config: Path, log_path: Path, token: str = "test-token") -> Iterator[ServerProcess]:
    """A real `recsys-mtl serve` process on a free loopback port, ready, stopped on exit."""
    with running_server(registry, config, log_path, env={"RECSYS_MTL_ADMIN_TOKEN": token}) as server:
        yield server
