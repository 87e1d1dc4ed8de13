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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.service_bench import (
    ROOT,
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
from tests.upstream import Reply, Upstream

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


def ipc_costs() -> list[str]:
    """What judging an answer costs in this process and in a worker process (the round trip,
    and the CPU the calling thread, the event loop's, spends on it), by answer size."""
    from formwork.validation import Validators
    from formwork.verdicts import judged, judged_in_worker

    validators = Validators()
    schema = {"type": "array", "items": {"type": "object"}, "uniqueItems": True}
    validator = validators.get(schema)
    rows = [
        "| answer | in this process | worker: round trip | worker: event-loop thread CPU |",
        "|---:|---:|---:|---:|",
    ]

    async def in_worker(text: str, n: int) -> tuple[float, float]:
        walls, cpus = [], []
        for _ in range(n):
            wall, cpu = time.perf_counter(), time.thread_time()
            await validators.off_loop(judged_in_worker, validator.digest, schema, text)
            walls.append(time.perf_counter() - wall)
            cpus.append(time.thread_time() - cpu)
        return statistics.median(walls) * 1000, statistics.median(cpus) * 1000

    async def table() -> None:
        await validators.off_loop(len, "")  # start the worker
        for items in (10, 80, 300, 6_000, 18_000):
            text = json.dumps([{"n": i} for i in range(items)])
            n = 50 if items < 1000 else 10
            inline = []
            for _ in range(n):
                started = time.perf_counter()
                judged(text, validator)
                inline.append(time.perf_counter() - started)
            wall, cpu = await in_worker(text, n)
            rows.append(
                f"| {len(text):,} chars | {statistics.median(inline) * 1000:.3f} ms "
                f"| {wall:.3f} ms | {cpu:.3f} ms |"
            )

    try:
        asyncio.run(table())
    finally:
        validators.close()
    return rows


def measure(args: argparse.Namespace, work: Path, procs: Processes, upstream: Upstream) -> str:
    redis_url = start_redis(procs, work)
    wait_until(procs, redis_ok(redis_url), "redis-server")
    variants = {"this tree": ROOT}
    if args.baseline is not None:
        variants = {f"baseline ({args.baseline.name})": args.baseline.resolve(), **variants}
    services = {}
    for n, (name, tree) in enumerate(variants.items()):
        port = free_port()
        env = formwork_env(
            redis_url.removesuffix("/0") + f"/{n}",
            upstream,
            work,
            log_level="ERROR",
            request_deadline_s="30",
        )
        env["PYTHONPATH"] = str(tree)
        procs.spawn(f"formwork-{n}", uvicorn_args("service.app:create_app", port, 1), env, tree)
        services[name] = f"http://127.0.0.1:{port}"
        wait_until(procs, http_ok(services[name] + "/healthz"), name)
        register_tasks(services[name], upstream)
    rounds = []
    for n in range(1, args.rounds + 1):
        for name, service in services.items():
            load = load_average()
            quiet, _ = healthz_during(service, args, hostile=False)
            loaded, answered = healthz_during(service, args, hostile=True)
            procs.check()
            rounds.append(Round(n, name, load, load_average(), quiet, loaded, answered))
    return report(args, rounds, list(services))


@dataclass
class Round:
    number: int
    variant: str
    load_before: str
    load_after: str
    quiet: dict[str, Any]
    hostile: dict[str, Any]
    answered: Counter[str]


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


def figures(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), percentile(values, 0.99), max(values)


def report(args: argparse.Namespace, rounds: list[Round], variants: list[str]) -> str:
    rows = [
        "| round | variant | load avg before / after | phase | probes | failed | p50 ms "
        "| p99 ms | worst ms |",
        "|---:|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rounds:
        for phase, found in (("quiet", r.quiet), ("hostile", r.hostile)):
            p50, p99, worst = figures(found["latencies_ms"])
            rows.append(
                f"| {r.number} | {r.variant} | {r.load_before} / {r.load_after} | {phase} "
                f"| {len(found['latencies_ms'])} | {found['failures']} | {p50:.1f} | {p99:.1f} "
                f"| **{worst:.1f}** |"
            )
    summary = [
        "| variant | hostile worst, each round (ms) | median of those | hostile p99, median "
        "| quiet worst, each round (ms) | 500s |",
        "|---|---|---:|---:|---|---:|",
    ]
    answered: dict[str, Counter[str]] = {name: Counter() for name in variants}
    for name in variants:
        mine = [r for r in rounds if r.variant == name]
        worsts = [max(r.hostile["latencies_ms"]) for r in mine]
        p99s = [percentile(r.hostile["latencies_ms"], 0.99) for r in mine]
        quiet = [max(r.quiet["latencies_ms"]) for r in mine]
        for r in mine:
            answered[name].update(r.answered)
        errors = sum(n for kind, n in answered[name].items() if kind.endswith(": 500"))
        summary.append(
            f"| {name} | {', '.join(f'{w:.1f}' for w in worsts)} "
            f"| {statistics.median(worsts):.1f} | {statistics.median(p99s):.1f} "
            f"| {', '.join(f'{w:.1f}' for w in quiet)} | {errors} |"
        )
    current = [max(r.hostile["latencies_ms"]) for r in rounds if r.variant == variants[-1]]
    met = sum(w <= HEALTHZ_TARGET_MS for w in current)
    lines = [
        "# Hostile input: regex engines, worker processes and the event-loop watchdog",
        "",
        f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine()}",
        f"- command: `{' '.join(sys.argv)}`",
        "- load average (1 min) before and after each round below: other work shares these cores",
        "",
        "## Regex engines (one match each, in this process)",
        "",
        *engines(),
        "",
        "## Judging an answer in this process and in a worker process",
        "",
        "A plain schema (array of objects, `uniqueItems`); medians. The event-loop thread's CPU "
        "is what the server's loop spends on a call to the worker (pickling the answer, "
        "unpickling the verdict): the rest of the round trip it serves other requests.",
        "",
        *ipc_costs(),
        "",
        f"## /healthz while hostile requests run ({args.duration:g} s per phase, "
        f"{args.concurrency} hostile loops, watchdog every 20 ms in its own process; "
        f"{args.rounds} round(s), the variants in turn; kinds: {', '.join(args.kinds)})",
        "",
        *rows,
        "",
        *summary,
        "",
        f"Target worst /healthz <= {HEALTHZ_TARGET_MS:g} ms while hostile ({variants[-1]}): "
        f"met in **{met} of {len(current)}** round(s).",
        "",
        "Hostile requests answered (variant: kind: status: count, all rounds):",
        "",
        *[
            f"- {name}: {kind}: {n}"
            for name in variants
            for kind, n in sorted(answered[name].items())
        ],
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
    parser.add_argument(
        "--baseline",
        type=Path,
        help="the source tree of an earlier version, measured in turn with this one",
    )
    parser.add_argument("--rounds", type=int, default=1, help="rounds of every variant")
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
