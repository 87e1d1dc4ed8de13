"""Fault benchmark: a bounded load on a real ``formwork serve`` while its upstream and its Redis
misbehave, phase by phase; what was answered, what the service itself failed, what went
upstream, what was lost, how fast it recovered, and its memory before and after.

Everything runs on loopback and stops by itself: a redis-server of its own on a free port (AOF
on), the scripted OpenAI-compatible upstream (tests/upstream.py, in this process, behind a
switch that can drip its answers a byte at a time) and ``formwork serve`` as a subprocess.
Run from the repository root::

    .venv/bin/python bench/faults.py --phase-s 8 --concurrency 16

It prints a markdown report and writes it to bench/faults.md (``--output``).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis
from starlette.types import ASGIApp, Message, Receive, Scope, Send

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.redis_server import RedisServer, free_port  # noqa: E402
from tests.served import Served  # noqa: E402
from tests.upstream import Reply, Upstream  # noqa: E402

GOOD = '{"label": "invoice"}'
CACHED_INPUTS = [f"cached input {i}" for i in range(20)]
BURST = 400


def task_spec(description: str) -> dict[str, object]:
    return {
        "description": description,
        "output_schema": {
            "type": "object",
            "properties": {"label": {"type": "string"}},
            "required": ["label"],
            "additionalProperties": False,
        },
        "routes": [
            {"model": "up/primary", "max_attempts": 1, "timeout_s": 2},
            {"model": "up/backup", "max_attempts": 1, "timeout_s": 2},
        ],
        "cache": {"ttl_s": 3600},
    }


TASKS = {"bench-shipped": "shipped", "bench-api": "api"}


class Drip:
    """ASGI wrapper: while ``on``, each response body goes out one byte every ``every_s``."""

    def __init__(self, app: ASGIApp, every_s: float = 0.5) -> None:
        self.app, self.every_s, self.on = app, every_s, False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def dripping(message: Message) -> None:
            body = message.get("body", b"")
            if not self.on or message["type"] != "http.response.body" or not body:
                await send(message)
                return
            for i in range(len(body)):
                await send({"type": "http.response.body", "body": body[i : i + 1],
                            "more_body": True})  # fmt: skip
                await asyncio.sleep(self.every_s)
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        await self.app(scope, receive, dripping)


@dataclass
class Phase:
    name: str
    sent: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    upstream_calls: int = 0
    lost: int = 0  # 404: a task the service no longer knew
    recovery_s: float | None = None
    latencies: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def own_5xx(self) -> int:
        """5xx that are the service's own failures: 500 (502/503/504 report upstream or Redis
        trouble as designed)."""
        return self.statuses.get("500", 0)


class Bench:
    def __init__(self, base: str, upstream: Upstream, redis_server: RedisServer) -> None:
        self.base = base
        self.upstream = upstream
        self.redis = redis_server
        self.serial = 0

    def body(self, cached: bool) -> dict[str, object]:
        self.serial += 1
        text = CACHED_INPUTS[self.serial % len(CACHED_INPUTS)] if cached else f"new {self.serial}"
        return {"input": text}

    async def one(self, client: httpx.AsyncClient, phase: Phase, *, cached: bool) -> None:
        task = list(TASKS)[(self.serial // len(CACHED_INPUTS)) % len(TASKS)]
        phase.sent += 1
        started = time.monotonic()
        try:
            response = await client.post(f"/v1/tasks/{task}/run", json=self.body(cached))
        except httpx.HTTPError as e:
            phase.statuses[type(e).__name__] += 1
            return
        phase.latencies.append(time.monotonic() - started)
        phase.statuses[str(response.status_code)] += 1
        phase.lost += response.status_code == 404

    async def load(self, phase: Phase, seconds: float, concurrency: int) -> None:
        """``concurrency`` clients for ``seconds``, half of the inputs cached, half new."""
        end = time.monotonic() + seconds
        async with httpx.AsyncClient(base_url=self.base, timeout=15) as client:

            async def worker(n: int) -> None:
                while time.monotonic() < end:
                    await self.one(client, phase, cached=n % 2 == 0)

            await asyncio.gather(*(worker(n) for n in range(concurrency)))

    async def ready_after(self, since: float) -> float:
        """Seconds from ``since`` until /readyz says ready and a new input is answered."""
        async with httpx.AsyncClient(base_url=self.base, timeout=5) as client:
            while time.monotonic() - since < 60:
                ready = (await client.get("/readyz")).json().get("status") == "ready"
                run = await client.post("/v1/tasks/bench-api/run", json=self.body(False))
                if ready and run.status_code == 200:
                    return time.monotonic() - since
                await asyncio.sleep(0.05)
        return float("nan")

    async def phase(
        self,
        name: str,
        seconds: float,
        concurrency: int,
        *,
        fault: Callable[[], None] | None = None,
        heal: Callable[[], None] | None = None,
        fault_after_s: float = 1.0,
        fault_for_s: float | None = None,
    ) -> Phase:
        """Load for ``seconds``; ``fault`` at ``fault_after_s``, ``heal`` after ``fault_for_s``
        (or at the end); then the time to recover."""
        phase = Phase(name)
        calls = self.upstream.calls()
        loading = asyncio.create_task(self.load(phase, seconds, concurrency))
        if fault is not None:
            await asyncio.sleep(fault_after_s)
            await asyncio.to_thread(fault)
            await asyncio.sleep(fault_for_s if fault_for_s is not None else seconds)
        await loading
        if heal is not None:
            healed_at = time.monotonic()
            await asyncio.to_thread(heal)
            phase.recovery_s = await self.ready_after(healed_at)
        phase.upstream_calls = self.upstream.calls() - calls
        return phase

    async def burst(self) -> Phase:
        """``BURST`` concurrent requests of already-cached inputs, all at once, each on its own
        raw connection (an HTTP client pool would be the bottleneck, not the server)."""
        phase = Phase(f"burst: {BURST} concurrent cached inputs")
        await warm(self)
        calls = self.upstream.calls()
        started = time.monotonic()
        await asyncio.gather(*(self.raw(phase) for _ in range(BURST)))
        took = time.monotonic() - started
        latencies = sorted(phase.latencies)
        p50, worst = latencies[len(latencies) // 2], latencies[-1]
        phase.note = f"all answered in {took:.2f} s (p50 {p50:.2f} s, max {worst:.2f} s)"
        phase.upstream_calls = self.upstream.calls() - calls
        return phase

    async def raw(self, phase: Phase) -> None:
        """One cached-input run over a fresh connection (HTTP/1.1, ``connection: close``)."""
        task = list(TASKS)[(self.serial // len(CACHED_INPUTS)) % len(TASKS)]
        body = json.dumps(self.body(cached=True)).encode()
        host, port = self.base.removeprefix("http://").split(":")
        phase.sent += 1
        started = time.monotonic()
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            f"POST /v1/tasks/{task}/run HTTP/1.1\r\nhost: {host}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n".encode()
            + body
        )
        answer = await reader.read()
        writer.close()
        phase.latencies.append(time.monotonic() - started)
        status = answer.split(b" ", 2)[1].decode() if answer else "no answer"
        phase.statuses[status] += 1
        phase.lost += status == "404"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_service(port: int, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "service.cli", "serve", "--port", str(port)]
    with log.open("ab") as out:
        process = subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            raise RuntimeError(log.read_text(errors="replace")[-3000:])
        time.sleep(0.1)
    raise RuntimeError("formwork serve did not start")


def service_env(redis_url: str, upstream_url: str, schemas: Path) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("FORMWORK_")},
        "PYTHONPATH": str(ROOT),
        "FORMWORK_CONFIG": str(schemas / "absent.toml"),
        "FORMWORK_REDIS_URL": redis_url,
        "FORMWORK_PROVIDERS__UP__BASE_URL": upstream_url,
        "FORMWORK_PROVIDERS__UP__API_KEY": "sk-bench",
        "FORMWORK_LOCAL__ENABLED": "false",
        "FORMWORK_SCHEMAS_DIR": str(schemas),
        "FORMWORK_REQUEST_DEADLINE_S": "5",
        "FORMWORK_LOG_LEVEL": "WARNING",
    }


async def run_phases(bench: Bench, admin: redis.Redis, args: argparse.Namespace) -> list[Phase]:
    up, rs, s, c = bench.upstream, bench.redis, args.phase_s, args.concurrency
    fault_s = min(6.0, s - 2)

    def healthy() -> None:
        up.set_default("*", GOOD)

    def upstream_fault(reply: Reply) -> Callable[[], None]:
        return lambda: up.set_default("*", reply)

    phases = [await bench.phase("healthy upstream", s, c)]
    phases.append(
        await bench.phase(
            "upstream 500 storm",
            s,
            c,
            fault_after_s=0,
            fault=upstream_fault(Reply(status=500)),
            heal=healthy,
        )
    )
    phases.append(
        await bench.phase(
            "upstream hangs (30 s)",
            s,
            c,
            fault_after_s=0,
            fault=upstream_fault(Reply(GOOD, delay_s=30)),
            heal=healthy,
        )
    )
    drip: Drip = args.drip

    def drip_on() -> None:
        drip.on = True

    def drip_off() -> None:
        drip.on = False

    phases.append(
        await bench.phase(
            "upstream slow drip (1 byte / 0.5 s)",
            s,
            c,
            fault_after_s=0,
            fault=drip_on,
            heal=drip_off,
        )
    )
    phases.append(
        await bench.phase(
            f"redis killed for {fault_s:g} s",
            s,
            c,
            fault=rs.stop,
            fault_for_s=fault_s,
            heal=rs.start,
        )
    )
    phases.append(
        await bench.phase(
            "redis restarted empty", s, c, fault=rs.restart_empty, fault_for_s=0, heal=lambda: None
        )
    )
    phases.append(
        await bench.phase(
            f"redis full (maxmemory) for {fault_s:g} s",
            s,
            c,
            fault=lambda: admin.config_set("maxmemory", 1),
            fault_for_s=fault_s,
            heal=lambda: admin.config_set("maxmemory", 0),
        )
    )
    phases.append(await bench.phase(f"redis read-only (replicaof) for {fault_s:g} s", s, c,
                                    fault=lambda: admin.replicaof("127.0.0.1", free_port()),
                                    fault_for_s=fault_s,
                                    heal=lambda: admin.replicaof("NO", "ONE")))  # fmt: skip
    phases.append(await bench.burst())
    return phases


def report(phases: list[Phase], rss: tuple[float, float], args: argparse.Namespace) -> str:
    command = f".venv/bin/python bench/faults.py --phase-s {args.phase_s:g} " + (
        f"--concurrency {args.concurrency}"
    )
    lines = [
        "# Fault benchmark",
        "",
        f"{datetime.date.today()} · {platform.platform()} · {os.cpu_count()} CPUs · "
        f"Python {platform.python_version()} · load average {os.getloadavg()[0]:.1f} at the end "
        "(the machine is shared)",
        "",
        f"Command: `{command}` (one `formwork serve` worker, its own redis-server with AOF, "
        f"the scripted upstream on loopback; {args.concurrency} clients per phase, half of the "
        "inputs cached, half new, spread over a shipped and an API-registered task; routes "
        "`up/primary` then `up/backup`, 2 s timeout each, 5 s request deadline).",
        "",
        "| phase | sent | answered by status | service's own 5xx | upstream calls "
        "| tasks lost | recovery |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in phases:
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(p.statuses.items()))
        recovery = "" if p.recovery_s is None else f"{p.recovery_s:.2f} s"
        lines.append(
            f"| {p.name} | {p.sent} | {statuses} | {p.own_5xx} | {p.upstream_calls} "
            f"| {p.lost} | {recovery or p.note} |"
        )
    lines += [
        "",
        f"RSS of the server: {rss[0]:.0f} MB before the first phase, {rss[1]:.0f} MB after the "
        "last.",
        "",
        "*Recovery* is the time from the end of the fault until `/readyz` says `ready` and a "
        "new input is answered 200. *Service's own 5xx* counts 500s: 502 (every route failed), "
        "503 (unavailable) and 504 (deadline) are the designed answers to upstream trouble. "
        "*Tasks lost* counts 404s for tasks that were registered.",
    ]
    return "\n".join(lines) + "\n"


async def main_async(args: argparse.Namespace, workdir: Path) -> str:
    upstream = Upstream()
    upstream.set_default("*", GOOD)
    args.drip = Drip(upstream.app)
    schemas = workdir / "schemas"
    schemas.mkdir()
    (schemas / "bench-shipped.json").write_text(
        json.dumps({"name": "bench-shipped", **task_spec("Shipped benchmark task.")})
    )
    redis_server = RedisServer.launch(workdir)
    port = free_port()
    with Served(args.drip, lifespan="off") as served:
        env = service_env(redis_server.url, f"{served.url}/v1", schemas)
        service = start_service(port, env, workdir / "formwork.log")
        try:
            base = f"http://127.0.0.1:{port}"
            bench = Bench(base, upstream, redis_server)
            await prepare(bench)
            before = rss_mb(service.pid)
            with redis.Redis.from_url(redis_server.url) as admin:
                phases = await run_phases(bench, admin, args)
            after = rss_mb(service.pid)
        finally:
            service.terminate()
            service.wait(timeout=10)
            redis_server.stop()
    return report(phases, (before, after), args)


async def prepare(bench: Bench) -> None:
    """Register ``bench-api`` (two versions, so that re-publishing must keep the number)."""
    async with httpx.AsyncClient(base_url=bench.base, timeout=10) as client:
        for version in ("v1", "v2"):
            response = await client.put("/v1/tasks/bench-api", json=task_spec(version))
            response.raise_for_status()
    await warm(bench)


async def warm(bench: Bench) -> None:
    """Cache every cached input for both tasks."""
    async with httpx.AsyncClient(base_url=bench.base, timeout=10) as client:
        for task in TASKS:
            for text in CACHED_INPUTS:
                response = await client.post(f"/v1/tasks/{task}/run", json={"input": text})
                response.raise_for_status()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phase-s", type=float, default=8.0, help="seconds of load per phase")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "faults.md")
    args = parser.parse_args()
    if not 3 <= args.phase_s <= 60:
        parser.error("--phase-s must be between 3 and 60")
    with tempfile.TemporaryDirectory(prefix="formwork-faults-") as tmp:
        text = asyncio.run(main_async(args, Path(tmp)))
    print(text)
    args.output.write_text(text)


if __name__ == "__main__":
    main()
