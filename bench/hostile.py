"""Hostile-input benchmark: how long other requests wait while hostile validations run.

Two parts, both on loopback and bounded in time:

1. Regex engines on the patterns that froze the service: Python's ``re`` (what jsonschema uses),
   the ``regex`` module with a per-match timeout, and RE2 (``google-re2``, what Formwork uses).
2. An event-loop watchdog: Formwork served by uvicorn (one worker) on a redis-server of its own
   and the scripted upstream (tests/upstream.py), which answers every run with a hostile answer
   (a backtracking-pattern string, 1,200 equal objects under uniqueItems, 20,000 distinct ones,
   ``[`` x 1,500, 16 kB of prose to repair, 250 kB of failing items); meanwhile hostile
   registrations (a 250 kB schema, a 2 MB body) and a watchdog process that GETs ``/healthz``
   every 20 ms and records how long each took. Target: worst ``/healthz`` <= 50 ms.

Run from the repository root::

    .venv/bin/python bench/hostile.py --duration 20 --concurrency 4

It prints a markdown report and writes it to bench/hostile.md (``--output``).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import functools
import json
import re
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.service_bench import (  # noqa: E402
    Processes,
    formwork_env,
    free_port,
    http_ok,
    load_average,
    machine,
    redis_ok,
    run_and_report,
    start_redis,
    uvicorn_args,
    wait_until,
)
from tests.upstream import Reply, Upstream  # noqa: E402

EVIL = "^(a+)+$"
EVIL_ALT = "^(a|aa)+$"
HEALTHZ_TARGET_MS = 50.0
JSON = {"Content-Type": "application/json"}


# -- part 1: regex engines ---------------------------------------------------------------------


def timed(fn: Callable[[], object]) -> tuple[float, str]:
    started = time.perf_counter()
    try:
        result = "match" if fn() else "no match"
    except TimeoutError:
        result = "timed out"
    return (time.perf_counter() - started) * 1000, result


def engines() -> list[str]:
    import re2
    import regex

    rows = ["| engine | pattern | text | time | result |", "|---|---|---|---:|---|"]

    def add(engine: str, pattern: str, text: str, fn: Callable[[], object]) -> None:
        ms, result = timed(fn)
        shown = f"{text[:1]} x {len(text) - 1} + `{text[-1]}`"
        rows.append(f"| {engine} | `{pattern}` | {shown} | {ms:,.2f} ms | {result} |")

    for n in (16, 18, 20, 22):
        text = "a" * n + "!"
        add("Python re", EVIL, text, functools.partial(re.compile(EVIL).search, text))
    for pattern, n in ((EVIL, 27), (EVIL_ALT, 40)):
        text = "a" * n + "!"
        search = functools.partial(regex.compile(pattern).search, text, timeout=0.1)
        add("regex, timeout=0.1 s", pattern, text, search)
    options = re2.Options()
    options.log_errors = False
    for pattern, n in ((EVIL, 27), (EVIL_ALT, 40), (EVIL, 250_000)):
        text = "a" * n + "!"
        add("RE2", pattern, text, functools.partial(re2.compile(pattern, options).search, text))
    email = r"^[^@\s]+@[^@\s]+\.[a-z]{2,}$"
    texts = [f"user{i}@example{i % 97}.com" for i in range(20_000)]
    for engine, search in (
        ("Python re", re.compile(email).search),
        ("regex", regex.compile(email).search),
        ("RE2", re2.compile(email, options).search),
    ):
        started = time.perf_counter()
        for text in texts:
            search(text)
        us = (time.perf_counter() - started) * 1e6 / len(texts)
        rows.append(f"| {engine} | `{email}` | 20,000 addresses | {us:.2f} µs each | typical |")
    return rows


# -- part 2: the watchdog ----------------------------------------------------------------------


def watchdog(url: str, duration_s: float, interval_s: float) -> None:
    """(In its own process) GET /healthz every ``interval_s``; print the latencies as JSON."""
    latencies: list[float] = []
    failures = 0
    deadline = time.monotonic() + duration_s
    with httpx.Client(timeout=30) as client:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                ok = client.get(url).status_code == 200
            except httpx.HTTPError:
                ok = False
            latencies.append((time.perf_counter() - started) * 1000)
            failures += not ok
            time.sleep(max(interval_s - latencies[-1] / 1000, 0))
    print(json.dumps({"latencies_ms": latencies, "failures": failures}))


def schema(pattern: str) -> dict[str, Any]:
    return {"type": "object", "properties": {"word": {"type": "string", "pattern": pattern}}}


TASKS: dict[str, tuple[dict[str, Any], str]] = {
    "pattern": (schema(EVIL), json.dumps({"word": "a" * 27 + "!"})),
    "pattern-long": (schema(EVIL), json.dumps({"word": "a" * 250_000 + "!"})),
    "unique-equal": (
        {"type": "array", "uniqueItems": True},
        json.dumps([{"n": 1, "tags": ["x"]}] * 1200),
    ),
    "unique-distinct": (
        {"type": "array", "uniqueItems": True, "items": {"type": "object"}},
        json.dumps([{"n": i} for i in range(20_000)]),
    ),
    "deep": ({"type": "object"}, "[" * 1500),
    "repair": ({"type": "object"}, "{'note': 'x', " * 1150),
    "errors": ({"type": "array", "items": {"type": "integer"}}, json.dumps(["z" * 50] * 4500)),
}


def big_schema() -> dict[str, Any]:
    properties = {f"field_{i}": {"type": "string", "maxLength": 40} for i in range(5200)}
    return {"type": "object", "properties": properties}


REGISTER, TOO_BIG = "register-250kB-schema", "2MB-body"
KINDS = (*sorted(TASKS), REGISTER, TOO_BIG)


async def hostile_load(
    service: str, duration_s: float, concurrency: int, kinds: list[str]
) -> Counter[str]:
    """Hostile runs and registrations from ``concurrency`` loops until the time is up, each
    loop going through ``kinds`` in turn."""
    answered: Counter[str] = Counter()
    too_big = json.dumps({"input": "x" * (2 << 20)})
    registration = {"output_schema": big_schema()}
    deadline = time.monotonic() + duration_s

    async def loop(worker: int, client: httpx.AsyncClient) -> None:
        n = worker
        while time.monotonic() < deadline:
            n += 1
            kind = kinds[n % len(kinds)]
            if kind == REGISTER:
                response = await client.put(f"{service}/v1/tasks/big-{n}", json=registration)
            else:
                task = "pattern" if kind == TOO_BIG else kind
                body = json.dumps({"input": f"{worker}-{n}", "options": {"cache": "bypass"}})
                response = await client.post(
                    f"{service}/v1/tasks/{task}/run",
                    content=too_big if kind == TOO_BIG else body,
                    headers=JSON,
                )
            answered[f"{kind}: {response.status_code}"] += 1

    async with httpx.AsyncClient(timeout=60) as client:
        await asyncio.gather(*(loop(i, client) for i in range(concurrency)))
    return answered


def register_tasks(service: str, upstream: Upstream) -> None:
    for name, (output_schema, answer) in TASKS.items():
        upstream.set_default(name, Reply(content=answer))
        spec = {
            "output_schema": output_schema,
            "routes": [{"model": f"up/{name}", "max_attempts": 2, "constrained": False}],
        }
        response = httpx.put(f"{service}/v1/tasks/{name}", json=spec, timeout=30)
        if response.status_code not in (200, 201):
            raise RuntimeError(f"registering {name}: {response.status_code} {response.text}")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(args: argparse.Namespace, work: Path, procs: Processes, upstream: Upstream) -> str:
    load_before = load_average()
    redis_url = start_redis(procs, work)
    wait_until(procs, redis_ok(redis_url), "redis-server")
    service_port = free_port()
    env = formwork_env(redis_url, upstream, work, log_level="ERROR", request_deadline_s="30")
    procs.spawn("formwork", uvicorn_args("service.app:create_app", service_port, 1), env)
    service = f"http://127.0.0.1:{service_port}"
    wait_until(procs, http_ok(service + "/healthz"), "formwork")
    register_tasks(service, upstream)

    quiet, _ = healthz_during(service, args, hostile=False)
    loaded, answered = healthz_during(service, args, hostile=True)
    procs.check()
    return report(args, quiet, loaded, answered, (load_before, load_average()))


def healthz_during(
    service: str, args: argparse.Namespace, *, hostile: bool
) -> tuple[dict[str, Any], Counter[str]]:
    """The watchdog's figures for one phase, and what the hostile requests were answered."""
    command = [sys.executable, __file__, "--watchdog", service + "/healthz"]
    command += ["--duration", str(args.duration)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as dog:
        answered: Counter[str] = Counter()
        if hostile:
            load = hostile_load(service, args.duration, args.concurrency, args.kinds)
            answered = asyncio.run(load)
        out, _ = dog.communicate(timeout=args.duration + 60)
    return json.loads(out), answered


def report(
    args: argparse.Namespace,
    quiet: dict[str, Any],
    loaded: dict[str, Any],
    answered: Counter[str],
    load_avg: tuple[str, str],
) -> str:
    def row(name: str, figures: dict[str, Any]) -> str:
        values = figures["latencies_ms"]
        return (
            f"| {name} | {len(values)} | {figures['failures']} | {statistics.median(values):.1f} "
            f"| {percentile(values, 0.99):.1f} | **{max(values):.1f}** |"
        )

    worst = max(loaded["latencies_ms"])
    verdict = "met" if worst <= HEALTHZ_TARGET_MS else "NOT met"
    server_errors = sum(n for kind, n in answered.items() if kind.endswith(": 500"))
    lines = [
        "# Hostile input: regex engines and the event-loop watchdog",
        "",
        f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine()}",
        f"- command: `{' '.join(sys.argv)}`",
        f"- load average (1 min) before / after: {load_avg[0]} / {load_avg[1]} "
        "(other work shares these cores)",
        "",
        "## Regex engines (one match each, in this process)",
        "",
        *engines(),
        "",
        f"## /healthz while hostile requests run ({args.duration:g} s per phase, "
        f"{args.concurrency} hostile loops, watchdog every 20 ms in its own process; "
        f"kinds: {', '.join(args.kinds)})",
        "",
        "| phase | probes | failed | p50 ms | p99 ms | worst ms |",
        "|---|---:|---:|---:|---:|---:|",
        row("quiet", quiet),
        row("hostile", loaded),
        "",
        f"Target worst /healthz <= {HEALTHZ_TARGET_MS:g} ms while hostile: **{verdict}** "
        f"({worst:.1f} ms). 500s from the service: **{server_errors}**.",
        "",
        "Hostile requests answered (kind: status: count):",
        "",
        *[f"- {kind}: {n}" for kind, n in sorted(answered.items())],
        "",
    ]
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=20, help="seconds per phase")
    parser.add_argument("--concurrency", type=int, default=4, help="hostile request loops")
    parser.add_argument(
        "--kinds",
        nargs="+",
        choices=KINDS,
        default=list(KINDS),
        help="hostile requests to send (default: all, in turn)",
    )
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "hostile.md")
    parser.add_argument("--watchdog", help=argparse.SUPPRESS)  # the watchdog process
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.watchdog:
        watchdog(args.watchdog, args.duration, 0.02)
        return
    run_and_report(measure, args, Upstream(), "formwork-hostile-")


if __name__ == "__main__":
    main()
