"""`captioner serve` in a child process on a free port, ready when this returns.

The browser test, the server fault tests, the screenshot script and the load benchmark each need a real
server in its own process (uvicorn, real sockets); they all start it here.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


class ServerDidNotStart(RuntimeError):
    pass


@dataclass
class ServerProcess:
    url: str
    port: int
    process: subprocess.Popen


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running_server(model_path: str | Path, *options: str, timeout: float = 60.0) -> Iterator[ServerProcess]:
    """Start `captioner serve --model_path MODEL OPTIONS` and wait until /api/health answers; stop it on exit.
    The server's output goes to a temporary file (a pipe nobody reads would block a chatty server) and is
    shown in the error when it stops or never answers."""
    port = free_port()
    command = [sys.executable, "-m", "captioner", "serve", "--model_path", str(model_path), "--port", str(port),
               *options]
    with tempfile.TemporaryFile("w+") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, text=True)
        try:
            server = ServerProcess(f"http://127.0.0.1:{port}", port, process)
            _wait_until_healthy(server, output, timeout)
            yield server
        finally:
            process.terminate()
            process.wait(timeout=10)


def _wait_until_healthy(server: ServerProcess, output, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{server.url}/api/health", timeout=1)
            return
        except OSError:
            if server.process.poll() is not None:
                output.seek(0)
                raise ServerDidNotStart(f"captioner serve stopped: {output.read()[-2000:]}") from None
            time.sleep(0.2)
    output.seek(0)
    raise ServerDidNotStart(f"captioner serve did not answer within {timeout:.0f} s: {output.read()[-2000:]}")
