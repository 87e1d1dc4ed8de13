"""Dashboard benchmark: how long the overview and a task page take to render with 50 tasks and
a 7-day window of recorded traffic, and the run path's cache-hit throughput with a dashboard
open and refreshing vs without, in the same run.

Everything runs on loopback and stops by itself: a redis-server of its own, the scripted
upstream (tests/upstream.py), Formwork as a real ``uvicorn --factory`` subprocess and ``wrk``.
The recorded traffic is written straight into Redis buckets through ``Metrics`` (its in-process
counters for a bucket's time, then one flush), seven days of hour buckets and two hours of
minute buckets for every task. Run from the repository root::

    .venv/bin/python bench/dashboard.py                  # writes bench/dashboard.md
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import random
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx
import redis
from pydantic import SecretStr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.service_bench import (  # noqa: E402
    ANSWER,
    Load,
    Processes,
    Sample,
    formwork_env,
    free_port,
    http_ok,
    load_average,
    machine,
    prepare,
    redis_ok,
    run,
    run_body,
    start_redis,
    uvicorn_args,
    wait_until,
    wrk,
)
from formwork import keys  # noqa: E402
from formwork.config import Settings  # noqa: E402
from formwork.metrics import Metrics  # noqa: E402
from formwork.protocol import TaskSpec  # noqa: E402
from formwork.registry import Registry  # noqa: E402
from formwork.store import Store  # noqa: E402
from formwork.validation import Validators  # noqa: E402
from tests.service.ui.history import MODELS, record, simulated  # noqa: E402
from tests.upstream import Reply, Upstream  # noqa: E402

HOURS, MINUTES = 168, 120


def spec(i: int) -> TaskSpec:
    return TaskSpec.model_validate(
        {
            "description": f"Benchmark task {i}",
            "output_schema": {"type": "object", "properties": {"label": {"type": "string"}}},
            "routes": [{"model": m} for m in MODELS],
        }
    )


async def seed(redis_url: str, tasks: int) -> tuple[int, int]:
    """Register the tasks and record 7 days of traffic for each; the buckets read by a 7-day
    window and the counter fields in Redis (both resolutions)."""
    settings = Settings(redis_url=SecretStr(redis_url))
    store = Store.from_settings(settings)
    registry = Registry(store, Validators(), refresh_s=1)
    metrics = Metrics(store, flush_s=1, failures_kept=10, request_log_kept=0)
    rng = random.Random(0)
    hourly = [simulated(rng, 120) for _ in range(24)]
    minutely = [simulated(rng, 8) for _ in range(24)]
    hours = [hourly[h % 24] for h in range(HOURS)]
    minutes = [minutely[m % 24] for m in range(MINUTES)]
    now = time.time()
    try:
        for t in range(tasks):
            name = f"bench-{t:02d}"
            await registry.put(name, spec(t))
            await record(metrics, name, now, hours=hours, minutes=minutes, offset=t)

    finally:
        await store.aclose()
    with redis.Redis.from_url(redis_url) as client:
        pipe = client.pipeline(transaction=False)
        for key in client.scan_iter(keys.PREFIX + "metrics:*", count=1000):
            pipe.hlen(key)
        fields = sum(pipe.execute())
    return tasks * (HOURS + MINUTES), fields


def time_renders(
    service: str, paths: list[str], repeat: int
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Wall time (ms) of each page's first fetch (cold: the overview sums each task's window
    from every bucket), then of ``repeat`` more fetches of each, in turn."""
    cold: dict[str, float] = {}
    timings: dict[str, list[float]] = {p: [] for p in paths}
    with httpx.Client(base_url=service, timeout=60) as client:
        for path in paths:
            started = time.perf_counter()
            response = client.get(path)
            cold[path] = (time.perf_counter() - started) * 1000
            if response.status_code != 200:
                raise RuntimeError(f"{path}: {response.status_code} {response.text[:300]}")
        for _ in range(repeat):
            for path in paths:
                started = time.perf_counter()
                response = client.get(path, headers={"hx-request": "true"})
                timings[path].append((time.perf_counter() - started) * 1000)
                if response.status_code != 200:
                    raise RuntimeError(f"{path}: {response.status_code}")
    return cold, timings


class Dashboard(threading.Thread):
    """An open dashboard: the overview and a task page, each refreshed every ``refresh_s``."""

    def __init__(self, service: str, paths: list[str], refresh_s: float) -> None:
        super().__init__(daemon=True)
        self.service, self.paths, self.refresh_s = service, paths, refresh_s
        self.stop = threading.Event()
        self.renders = 0

    def run(self) -> None:
        with httpx.Client(base_url=self.service, timeout=60) as client:
            while not self.stop.is_set():
                started = time.monotonic()
                for path in self.paths:
                    client.get(path, headers={"hx-request": "true"}).raise_for_status()
                    self.renders += 1
                self.stop.wait(max(0.0, self.refresh_s - (time.monotonic() - started)))


def throughput(
    load: Load, args: argparse.Namespace, service: str, work: Path
) -> dict[str, list[tuple[Sample, int]]]:
    """wrk on cache hits with no dashboard, then with one open on each window, in turn; the
    order rotates from round to round."""
    modes = ["none", *args.windows]
    found: dict[str, list[tuple[Sample, int]]] = {mode: [] for mode in modes}
    wrk(load, args.warmup, work)
    for n in range(args.rounds):
        for mode in modes[n % len(modes) :] + modes[: n % len(modes)]:
            paths = [f"/ui?window={mode}", f"/ui/tasks/bench-00?window={mode}"]
            boards = (
                []
                if mode == "none"
                else [Dashboard(service, paths, args.refresh) for _ in range(args.dashboards)]
            )
            for board in boards:
                board.start()
            sample = wrk(load, args.duration, work)
            for board in boards:
                board.stop.set()
                board.join()
            found[mode].append((sample, sum(b.renders for b in boards)))
            print(f"round {n + 1} dashboard {mode}: {sample.rps:,.0f} req/s", file=sys.stderr)
    return found


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def report(
    args: argparse.Namespace,
    seeded: tuple[int, int],
    renders: tuple[dict[str, float], dict[str, list[float]]],
    hits: dict[str, list[tuple[Sample, int]]],
    loads: tuple[str, str],
) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Dashboard benchmark: render times and the run path with a dashboard open",
        "",
        f"- date: {now}",
        f"- machine: {machine()}",
        f"- command: `python bench/dashboard.py{''.join(' ' + a for a in sys.argv[1:])}`",
        f"- data: {args.tasks} tasks, each with {HOURS} hour buckets (7 days) and {MINUTES} "
        f"minute buckets of recorded traffic, 3 models; {seeded[0]:,} buckets, "
        f"{seeded[1]:,} counter fields in Redis",
        "- server: uvicorn --workers 1, log level warning, no access log; one redis-server",
        f"- load average (1 min) before / after: {loads[0]} / {loads[1]}",
        "",
        f"## Render time: the first fetch of each page, then {args.repeat} more of each in turn",
        "",
        "| page | first ms | p50 ms | p95 ms | max ms |",
        "|---|---:|---:|---:|---:|",
    ]
    cold, timed = renders
    for path, values in timed.items():
        lines.append(
            f"| `{path}` | {cold[path]:.1f} | {statistics.median(values):.1f} | "
            f"{pct(values, 0.95):.1f} | {max(values):.1f} |"
        )
    lines += [
        "",
        f"## Cache-hit throughput: wrk -t1 -c{args.concurrency}, {args.duration} s each, with "
        f"no dashboard and with {args.dashboards} open (overview + a task page, refreshed every "
        f"{args.refresh:g} s) on each window; {args.rounds} rounds, order rotating",
        "",
        "Server CPU per request is the server's whole CPU time (dashboard renders included) "
        "over the hits it served: the steadier figure on a shared machine.",
        "",
        "| dashboard | req/s per round | median req/s | vs none | server CPU µs/request "
        "(median) | renders per round |",
        "|---|---|---:|---:|---:|---|",
    ]
    base = statistics.median(s.rps for s, _ in hits["none"])
    for mode, runs in hits.items():
        rps = statistics.median(s.rps for s, _ in runs)
        cpu = statistics.median(s.cpu_us or 0.0 for s, _ in runs)
        lines.append(
            f"| {'none' if mode == 'none' else 'open, window ' + mode} | "
            f"{', '.join(f'{s.rps:,.0f}' for s, _ in runs)} | {rps:,.0f} | {rps / base:.0%} | "
            f"{cpu:,.0f} | {', '.join(str(r) for _, r in runs)} |"
        )
    lines.append("")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=20, help="fetches of each page timed")
    parser.add_argument("--concurrency", type=int, default=32, help="wrk connections")
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk measurement")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dashboards", type=int, default=1, help="dashboards open at once")
    parser.add_argument("--refresh", type=float, default=5.0, help="their refresh interval (s)")
    parser.add_argument(
        "--windows", nargs="+", default=["1h", "7d"], help="the windows an open dashboard shows"
    )
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "dashboard.md")
    return parser.parse_args()


def main() -> None:
    run(parse_args(), measure)


def measure(args: argparse.Namespace, work: Path, procs: Processes, upstream: Upstream) -> str:
    load_before = load_average()
    upstream.set_default("*", Reply(content=ANSWER))
    redis_url = start_redis(procs, work)
    wait_until(procs, redis_ok(redis_url), "redis-server")
    print("recording 7 days of traffic", file=sys.stderr)
    seeded = asyncio.run(seed(redis_url, args.tasks))

    service_port = free_port()
    service_env = formwork_env(redis_url, upstream, work)
    procs.spawn("formwork", uvicorn_args("service.app:create_app", service_port, 1), service_env)
    service = f"http://127.0.0.1:{service_port}"
    wait_until(procs, http_ok(service + "/healthz"), "formwork")

    paths = [f"/ui?window={w}" for w in ("1h", "24h", "7d")]
    paths += [f"/ui/tasks/bench-00?window={w}" for w in ("1h", "24h", "7d")]
    print("timing renders", file=sys.stderr)
    renders = time_renders(service, paths, args.repeat)

    prepare(service, upstream)
    path = "/v1/tasks/bench-label/run"
    load = Load("hit", service + path, run_body("use"), args.concurrency, procs.pid("formwork"))
    hits = throughput(load, args, service, work)
    procs.check()
    return report(args, seeded, renders, hits, (load_before, load_average()))


if __name__ == "__main__":
    main()
