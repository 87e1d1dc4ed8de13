"""Client-side figures: the CLI's start-up, and batch throughput against the same inputs sent
one by one.

Loopback only, and it stops by itself: a redis-server of its own, the scripted upstream
(tests/upstream.py, in this process; every reply waits ``--delay-ms`` like a model would) and
Formwork as a ``formwork serve`` subprocess. Run from the repository root::

    .venv/bin/python bench/client.py --items 200 --delay-ms 50

It prints a markdown report and writes it to bench/client.md (``--output``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.service_bench import (  # noqa: E402
    TASK_SPEC,
    Processes,
    free_port,
    http_ok,
    load_average,
    machine,
    redis_ok,
    wait_until,
)
from formwork.client import Client  # noqa: E402
from tests.upstream import Reply, Upstream  # noqa: E402

TASK = "bench-batch"
SPEC = TASK_SPEC  # the service bench's task: one route, cached for an hour


def timed(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def startup(url: str, runs: int) -> dict[str, float]:
    """Median wall seconds of a client command, and of importing the CLI module alone."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "service.cli", "--url", url, "tasks", "list"]
    imports = [sys.executable, "-c", "import service.cli, service.commands"]
    found = {}
    for name, args in (("formwork tasks list", command), ("import only", imports)):
        times = [
            timed(lambda a=args: subprocess.run(a, env=env, check=True, capture_output=True))
            for _ in range(runs)
        ]
        found[name] = statistics.median(times)
    found["python -c pass"] = statistics.median(
        timed(lambda: subprocess.run([sys.executable, "-c", "pass"], check=True))
        for _ in range(runs)
    )
    return found


def throughput(client: Client, items: int, concurrency: int) -> list[tuple[str, float, int]]:
    """(case, items/s, upstream calls) for one by one and batch, uncached then cached."""
    rows = []
    for cached in (False, True):
        for mode in ("one by one", "batch job"):
            inputs = [f"{mode} text {i}" for i in range(items)]
            if cached:  # warm the cache with the same inputs first
                client.batch_results(wait(client, client.start_batch(TASK, inputs).id), limit=1)
            calls = UPSTREAM.calls()
            if mode == "one by one":
                seconds = timed(lambda i=inputs: [client.run(TASK, v) for v in i])
            else:
                seconds = timed(lambda i=inputs: wait(client, client.start_batch(TASK, i).id))
            label = f"{'cached' if cached else 'uncached'}, {mode}"
            rows.append((label, items / seconds, UPSTREAM.calls() - calls))
    return rows


def wait(client: Client, batch_id: str) -> str:
    while client.batch_job(batch_id).status == "running":
        time.sleep(0.02)
    return batch_id


UPSTREAM = Upstream()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--delay-ms", type=float, default=50.0)
    parser.add_argument("--concurrency", type=int, default=4, help="batch_concurrency")
    parser.add_argument("--runs", type=int, default=10, help="start-up samples")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "client.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, UPSTREAM:
        work = Path(tmp)
        procs = Processes(work)
        try:
            report = measure(args, work, procs)
        finally:
            procs.stop_all()
    print(report)
    args.output.write_text(report)


def measure(args: argparse.Namespace, work: Path, procs: Processes) -> str:
    UPSTREAM.set_default("bench-model", Reply('{"label": "ok"}', delay_s=args.delay_ms / 1000))
    redis_port, port = free_port(), free_port()
    procs.spawn(
        "redis", ["redis-server", "--port", str(redis_port), "--save", "", "--dir", str(work)]
    )
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    wait_until(procs, redis_ok(redis_url), "redis")
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "FORMWORK_REDIS_URL": redis_url,
        "FORMWORK_LOCAL__ENABLED": "false",
        "FORMWORK_PROVIDERS__UP__BASE_URL": UPSTREAM.base_url,
        "FORMWORK_BATCH_CONCURRENCY": str(args.concurrency),
        "FORMWORK_SCHEMAS_DIR": str(work / "none"),
    }
    cli = [sys.executable, "-m", "service.cli"]
    procs.spawn("formwork", [*cli, "serve", "--port", str(port)], env)
    url = f"http://127.0.0.1:{port}"
    wait_until(procs, http_ok(f"{url}/healthz"), "formwork")
    with Client(url) as client:
        client.apply(TASK, SPEC)
        rows = throughput(client, args.items, args.concurrency)
    started = startup(url, args.runs)
    return report(args, rows, started)


def report(
    args: argparse.Namespace, rows: list[tuple[str, float, int]], started: dict[str, float]
) -> str:
    lines = [
        "# Client figures",
        "",
        f"`.venv/bin/python bench/client.py --items {args.items} --delay-ms {args.delay_ms:g} "
        f"--concurrency {args.concurrency} --runs {args.runs}` on {datetime.date.today()}, "
        f"{machine()}, load average {load_average()}.",
        "",
        f"## Batch vs one by one ({args.items} distinct inputs, upstream replies after "
        f"{args.delay_ms:g} ms, batch_concurrency {args.concurrency})",
        "",
        "| case | items/s | upstream calls |",
        "|---|---:|---:|",
        *[f"| {label} | {rate:,.1f} | {calls} |" for label, rate, calls in rows],
        "",
        f"## CLI start-up (median of {args.runs}, wall seconds)",
        "",
        "| command | s |",
        "|---|---:|",
        *[f"| `{name}` | {seconds:.3f} |" for name, seconds in started.items()],
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
