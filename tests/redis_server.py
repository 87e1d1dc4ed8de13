"""A real redis-server for the tests: one the tests start on a free port (``owned``), or the one
named by ``FORMWORK_TEST_REDIS_URL``, which the tests never flush, stop or restart."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

REDIS_SERVER = "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ping(port: int, *, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """``url``, ``owned``; ``stop()``/``start()`` (same port) for tests of a Redis outage."""

    def __init__(self, url: str, *, owned: bool, port: int = 0, workdir: Path | None = None):
        self.url = url
        self.owned = owned
        self.port = port
        self.workdir = workdir
        self._process: subprocess.Popen[bytes] | None = None

    @classmethod
    def external(cls, url: str) -> RedisServer:
        return cls(url, owned=False)

    @classmethod
    def launch(cls, workdir: Path) -> RedisServer:
        binary = shutil.which("redis-server") or REDIS_SERVER
        if not Path(binary).exists():
            pytest.fail(
                "redis-server not found: the tests need a real Redis "
                "(apt-get install redis-server, or set FORMWORK_TEST_REDIS_URL)"
            )
        for attempt in range(3):  # another process may take the free port before Redis does
            port = free_port()
            server = cls(f"redis://127.0.0.1:{port}/0", owned=True, port=port, workdir=workdir)
            try:
                server.start()
            except RuntimeError:
                if attempt == 2:
                    raise
            else:
                return server
        raise AssertionError("unreachable")

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def require_owned(self) -> None:
        """Skip the calling test unless the tests started this server themselves."""
        if not self.owned:
            pytest.skip("needs a redis-server of its own (FORMWORK_TEST_REDIS_URL is set)")

    def start(self, *, timeout_s: float = 10.0) -> None:
        """Start on the same port and wait until it answers PING."""
        self.require_owned()
        if self.running:
            return
        assert self.workdir is not None
        binary = shutil.which("redis-server") or REDIS_SERVER
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        # AOF, as in production: a restarted server keeps its data (the outage tests rely on it)
        args += ["--appendonly", "yes", "--daemonize", "no", "--dir", str(self.workdir)]
        with (self.workdir / "redis.log").open("ab") as log:
            self._process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while not ping(self.port):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                log_text = (self.workdir / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server did not start on port {self.port}:\n{log_text}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop the server (the port then refuses connections until ``start()``)."""
        self.require_owned()
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart_empty(self) -> None:
        """Stop, drop the data (AOF and snapshot), and start again on the same port: a Redis
        that comes back having lost everything."""
        self.stop()
        assert self.workdir is not None
        shutil.rmtree(self.workdir / "appendonlydir", ignore_errors=True)
        (self.workdir / "dump.rdb").unlink(missing_ok=True)
        self.start()

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open and nothing answers."""
        self.require_owned()
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.require_owned()
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)
