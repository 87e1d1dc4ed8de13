"""Service benchmark: cache-hit throughput against a minimal FastAPI + Redis reference, and the
miss-path overhead of a run over a direct call to the same upstream.

Everything runs on loopback and stops by itself: a redis-server of its own, the scripted
OpenAI-compatible upstream (tests/upstream.py, in this process), Formwork and the reference app
as real ``uvicorn --factory`` subprocesses, and ``wrk`` as the load generator for all of them.
Run from the repository root::

    .venv/bin/python bench/service_bench.py --workers 1 --concurrency 32 --duration 10

It prints a markdown report and writes it to bench/service.md (``--output``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.upstream import Reply, Upstream  # noqa: E402

TASK = "bench-label"
MODEL = "bench-model"
INPUT = {"text": "Invoice 4411 from Acme Corp, due 2024-07-01, total 1,250.00 EUR."}
TASK_SPEC = {
    "description": "Benchmark task: label a short text.",
    "output_schema": {
        "type": "object",
        "properties": {"label": {"type": "string"}},
        "required": ["label"],
        "additionalProperties": False,
    },
    "instructions": "Give the text one short label.",
    "routes": [
        {"model": f"up/{MODEL}", "prompt": "instructed", "constrained": True, "max_attempts": 1}
    ],
    "cache": {"ttl_s": 3600},
}
ANSWER = '{"label": "invoice"}'
JSON = {"Content-Type": "application/json"}
HIT_TARGET = 0.60  # Formwork hit throughput / reference throughput
OVERHEAD_P50_TARGET_MS = 3.0
PACKAGES = ("fastapi", "starlette", "uvicorn", "uvloop", "httptools", "pydantic", "redis", "openai")

WRK_SCRIPT = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [==[{body}]==]

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_JSON {{\\"requests\\": %d, \\"duration_us\\": %d, \\"errors\\": %d, " ..
    "\\"non2xx\\": %d, \\"p50_us\\": %d, \\"p90_us\\": %d, \\"p99_us\\": %d, " ..
    "\\"max_us\\": %d}}\\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


class BenchUpstream(Upstream):
    """The scripted upstream, keeping only the last request body: a list growing by thousands of
    bodies a second makes the collector's full passes (tens of ms) show in the direct p99."""

    def reset(self) -> None:
        super().reset()
        self.requests = deque(maxlen=1)  # type: ignore[assignment]
        self.authorizations = deque(maxlen=1)  # type: ignore[assignment]


# -- processes ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Processes:
    """Every subprocess this benchmark starts, each in its own process group, stopped at exit."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[tuple[str, subprocess.Popen[bytes]]] = []

    def spawn(
        self, name: str, args: list[str], env: dict[str, str] | None = None, cwd: Path = ROOT
    ) -> int:
        with (self.logs / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(
                args,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started.append((name, process))
        return process.pid

    def pid(self, name: str) -> int:
        return next(p.pid for n, p in self.started if n == name)

    def check(self) -> None:
        for name, process in self.started:
            if process.poll() is not None:
                tail = (self.logs / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{tail}")

    def stop_all(self) -> None:
        for _, process in reversed(self.started):
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        for _, process in reversed(self.started):
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.started.clear()


def wait_until(procs: Processes, probe: Iterator[bool], what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    for ok in probe:
        if ok:
            return
        procs.check()
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not come up within {timeout_s:g} s")
        time.sleep(0.05)


def http_ok(url: str) -> Iterator[bool]:
    while True:
        try:
            yield httpx.get(url, timeout=1).status_code == 200
        except httpx.HTTPError:
            yield False


def redis_ok(url: str) -> Iterator[bool]:
    while True:
        try:
            with redis.Redis.from_url(url) as client:
                yield bool(client.ping())
        except redis.RedisError:
            yield False


def start_redis(procs: Processes, work: Path) -> str:
    """A redis-server of its own (no persistence) on a free port; its URL."""
    port = free_port()
    procs.spawn(
        "redis",
        [
            *("redis-server", "--port", str(port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no", "--dir", str(work)),
        ],
    )
    return f"redis://127.0.0.1:{port}/0"


def formwork_env(redis_url: str, upstream: Upstream, work: Path, **extra: str) -> dict[str, str]:
    """The environment of a Formwork server on ``redis_url`` with ``upstream`` as provider
    ``up``, no embedded model and no task files; ``extra`` adds FORMWORK_ variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORMWORK_")}
    return env | {
        "FORMWORK_CONFIG": str(work / "absent.toml"),
        "FORMWORK_REDIS_URL": redis_url,
        "FORMWORK_PROVIDERS__UP__BASE_URL": upstream.base_url,
        "FORMWORK_PROVIDERS__UP__API_KEY": "x",
        "FORMWORK_LOCAL__ENABLED": "false",
        "FORMWORK_SCHEMAS_DIR": str(work / "schemas"),
        "FORMWORK_LOG_LEVEL": "WARNING",
        **{f"FORMWORK_{k.upper()}": v for k, v in extra.items()},
    }


def uvicorn_args(app: str, port: int, workers: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        app,
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--log-level",
        "warning",
        "--no-access-log",
    ]


# -- load --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    name: str
    url: str
    body: str
    concurrency: int
    server: int | None = None  # process group whose CPU time is metered


@dataclass(frozen=True)
class Sample:
    requests: int
    seconds: float
    errors: int
    non2xx: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    cpu_us: float | None  # server CPU time (user + system) per request

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


def group_cpu_s(pgid: int) -> float:
    """User + system CPU seconds of the live processes in a process group (every worker)."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:
                ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def wrk(load: Load, duration_s: int, scripts: Path) -> Sample:
    script = scripts / f"{load.name}.lua"
    script.write_text(WRK_SCRIPT.format(body=load.body))
    args = ["wrk", "-t1", f"-c{load.concurrency}", f"-d{duration_s:g}s", "--timeout", "10s"]
    args += ["--latency", "-s", str(script), load.url]
    cpu_before = group_cpu_s(load.server) if load.server else 0.0
    done = subprocess.run(args, capture_output=True, text=True, timeout=duration_s + 60)
    cpu = group_cpu_s(load.server) - cpu_before if load.server else None
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed on {load.name}:\n{done.stdout}\n{done.stderr}")
    raw = json.loads(line.removeprefix("BENCH_JSON "))
    sample = Sample(
        requests=raw["requests"],
        seconds=raw["duration_us"] / 1e6,
        errors=raw["errors"],
        non2xx=raw["non2xx"],
        p50_ms=raw["p50_us"] / 1000,
        p90_ms=raw["p90_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        max_ms=raw["max_us"] / 1000,
        cpu_us=None if cpu is None else cpu * 1e6 / max(raw["requests"], 1),
    )
    if sample.errors or sample.non2xx:
        raise RuntimeError(f"{load.name}: {sample.errors} socket errors, {sample.non2xx} non-2xx")
    return sample


# -- set-up ------------------------------------------------------------------------------------


def run_body(cache: str) -> str:
    return json.dumps({"input": INPUT, "options": {"cache": cache}})


def expect(ok: bool, what: str, body: object) -> None:
    if not ok:
        raise RuntimeError(f"unexpected answer ({what}): {body}")


def prepare(service: str, upstream: Upstream) -> tuple[str, str]:
    """Register the task, start a fresh cache generation and fill it; return Formwork's cache key
    and the exact chat body Formwork sends upstream (for the direct measurement)."""
    url = f"/v1/tasks/{TASK}/run"
    with httpx.Client(base_url=service, timeout=30) as client:
        put = client.put(f"/v1/tasks/{TASK}", json=TASK_SPEC)
        expect(put.status_code in (200, 201), "register", put.text)
        fresh = client.delete(f"/v1/tasks/{TASK}/cache")
        expect(fresh.status_code == 200, "cache invalidation", fresh.text)
        first = client.post(url, content=run_body("use"), headers=JSON).json()
        expect(first.get("output") == json.loads(ANSWER), "first run", first)
        expect(first.get("cached") is False, "first run", first)
        hit = client.post(url, content=run_body("use"), headers=JSON).json()
        expect(hit.get("cached") is True, "cache hit", hit)
        upstream.reset()
        upstream.set_default("*", Reply(content=ANSWER))
        miss = client.post(url, content=run_body("bypass"), headers=JSON).json()
        expect(miss.get("cached") is False, "bypass", miss)
        expect(miss["attempts"][0]["outcome"] == "valid", "bypass attempt", miss)
    expect(upstream.calls() == 1, "upstream calls", upstream.calls())
    version, generation = put.json()["version"], fresh.json()["cache_generation"]
    return f"fw:cache:{TASK}:{version}:{generation}:", json.dumps(upstream.requests[-1])


def cache_entry_key(redis_url: str, prefix: str) -> str:
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        found = list(client.scan_iter(match=prefix + "*"))
    if len(found) != 1:
        raise RuntimeError(f"expected one cache entry {prefix}*, found {found}")
    return str(found[0])


# -- report ------------------------------------------------------------------------------------


def versions() -> str:
    parts = [f"Python {platform.python_version()}"]
    for name in PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            parts.append(f"{name} {importlib.metadata.version(name)}")
    server = subprocess.run(["redis-server", "--version"], capture_output=True, text=True)
    parts.append(server.stdout.split(" sha=")[0].replace("Redis server v=", "redis-server "))
    probe = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
    parts.append(" ".join((probe.stdout or probe.stderr).split()[:2]))
    return ", ".join(parts)


def load_average() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} cores ({model}), {platform.system()} {platform.release()}"


def ms(value: float) -> str:
    return f"{value:.2f}"


def row(label: str, samples: list[Sample], cell: Callable[[Sample], float], fmt: str) -> str:
    values = [cell(s) for s in samples]
    cells = [format(v, fmt) for v in values] + [format(statistics.median(values), fmt)]
    return f"| {label} | " + " | ".join(cells) + " |"


def latency_row(label: str, samples: list[Sample]) -> str:
    med = statistics.median
    cells = [f"{ms(s.p50_ms)} / {ms(s.p99_ms)}" for s in samples]
    cells.append(f"{ms(med(s.p50_ms for s in samples))} / {ms(med(s.p99_ms for s in samples))}")
    return f"| {label} | " + " | ".join(cells) + " |"


def paired_row(label: str, cells: list[str], median: str) -> str:
    return f"| {label} | " + " | ".join(cells) + f" | **{median}** |"


def cpu(sample: Sample) -> float:
    return sample.cpu_us or 0.0


def report(
    args: argparse.Namespace,
    hits: dict[str, list[Sample]],
    misses: dict[str, list[Sample]],
    load_avg: tuple[str, str],
) -> str:
    rounds = len(hits["formwork"])
    fw, ref = hits["formwork"], hits["reference"]
    direct, bypass = misses["direct"], misses["formwork"]
    ratios = [f.rps / r.rps for f, r in zip(fw, ref, strict=True)]
    cpu_ratios = [cpu(r) / cpu(f) for f, r in zip(fw, ref, strict=True)]
    over50 = [b.p50_ms - d.p50_ms for b, d in zip(bypass, direct, strict=True)]
    over99 = [b.p99_ms - d.p99_ms for b, d in zip(bypass, direct, strict=True)]
    med = statistics.median
    blank = " |" * (rounds + 1)
    lines = [
        "| measurement | " + " | ".join(f"round {i + 1}" for i in range(rounds)) + " | median |",
        "|---|" + "---:|" * (rounds + 1),
        f"| **cache hit**, {args.concurrency} connections |{blank}",
        row("Formwork req/s", fw, lambda s: s.rps, ",.0f"),
        latency_row("Formwork p50 / p99 ms", fw),
        row("Formwork server CPU µs/request", fw, cpu, ",.0f"),
        row("reference req/s", ref, lambda s: s.rps, ",.0f"),
        latency_row("reference p50 / p99 ms", ref),
        row("reference server CPU µs/request", ref, cpu, ",.0f"),
        paired_row(
            "Formwork / reference req/s", [f"{r:.0%}" for r in ratios], f"{med(ratios):.0%}"
        ),
        paired_row(
            "reference / Formwork CPU per request",
            [f"{r:.0%}" for r in cpu_ratios],
            f"{med(cpu_ratios):.0%}",
        ),
        f"| **miss path**, 1 connection, `cache: bypass` |{blank}",
        latency_row("direct upstream p50 / p99 ms", direct),
        latency_row("through Formwork p50 / p99 ms", bypass),
        paired_row(
            "overhead p50 / p99 ms",
            [f"{ms(a)} / {ms(b)}" for a, b in zip(over50, over99, strict=True)],
            f"{ms(med(over50))} / {ms(med(over99))}",
        ),
        row("Formwork server CPU µs/request", bypass, cpu, ",.0f"),
    ]
    hit_ok = med(ratios) >= HIT_TARGET
    miss_ok = med(over50) <= OVERHEAD_P50_TARGET_MS
    targets = [
        "| target | measured (median) | met |",
        "|---|---:|---|",
        f"| cache-hit throughput ≥ {HIT_TARGET:.0%} of the reference | {med(ratios):.0%} | "
        + ("yes" if hit_ok else "**no**")
        + " |",
        f"| miss-path overhead p50 ≤ {OVERHEAD_P50_TARGET_MS:g} ms | {ms(med(over50))} ms | "
        + ("yes" if miss_ok else "**no**")
        + " |",
    ]
    command = "python bench/service_bench.py " + " ".join(sys.argv[1:])
    header = [
        "# Service benchmark: cache hits and miss overhead",
        "",
        f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine()}",
        f"- command: `{command.strip()}`",
        f"- load: wrk -t1 (one load thread; it shares the cores with the servers and Redis), "
        f"{args.duration:g} s per measurement after a {args.warmup:g} s warm-up of each target, "
        f"{rounds} rounds, service and reference alternating",
        f"- servers: uvicorn --workers {args.workers}, log level warning, no access log; "
        "one redis-server (no persistence); scripted upstream in the benchmark process",
        f"- load average (1 min) before / after: {load_avg[0]} / {load_avg[1]} "
        "(anything above ~1 before the run is other work sharing the cores)",
        f"- versions: {versions()}",
        "",
    ]
    return "\n".join([*header, *lines, "", *targets, ""])


# -- main --------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers per server")
    parser.add_argument("--concurrency", type=int, default=32, help="wrk connections (hits)")
    parser.add_argument("--duration", type=int, default=10, help="seconds per measurement")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up seconds per target")
    parser.add_argument("--rounds", type=int, default=2, help="measurements of each target")
    parser.add_argument(
        "--redis-url",
        help="use this Redis instead of starting a redis-server (the task bench-label and its "
        "cache entries are left there)",
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="niceness for everything the benchmark runs; on a shared machine a negative value "
        "(root) keeps other work from dominating the numbers",
    )
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "service.md")
    parser.add_argument(
        "--profile",
        type=Path,
        help="after the measurements, run one hit and one miss load under py-spy and write "
        "their collapsed stacks here",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.nice:
        os.nice(args.nice)  # inherited by redis-server, both servers and wrk
    run(args, measure)


Measure = Callable[[argparse.Namespace, Path, "Processes", Upstream], str]


def run(args: argparse.Namespace, measure: Measure) -> None:
    """Measure with a scripted upstream and processes of its own; print and write the report."""
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install -y wrk")
    run_and_report(measure, args, BenchUpstream(), "formwork-bench-")


Measure = Callable[[argparse.Namespace, Path, Processes, Upstream], str]


def run_and_report(
    measure: Measure, args: argparse.Namespace, upstream: Upstream, prefix: str
) -> None:
    """``measure`` in a scratch directory with ``upstream`` started and every process it
    spawns stopped after; its markdown is printed and written to ``args.output``."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp, upstream:
        work = Path(tmp)
        (work / "schemas").mkdir()
        procs = Processes(work)
        try:
            text = measure(args, work, procs, upstream)
        finally:
            procs.stop_all()
    print(text)
    args.output.write_text(text)
    print(f"written to {args.output}", file=sys.stderr)


def measure(args: argparse.Namespace, work: Path, procs: Processes, upstream: Upstream) -> str:
    load_before = load_average()
    upstream.set_default("*", Reply(content=ANSWER))
    redis_url = args.redis_url
    if redis_url is None:
        redis_url = start_redis(procs, work)
    wait_until(procs, redis_ok(redis_url), "redis-server")

    env = {k: v for k, v in os.environ.items() if not k.startswith("FORMWORK_")}
    service_port, reference_port = free_port(), free_port()
    procs.spawn(
        "formwork",
        uvicorn_args("service.app:create_app", service_port, args.workers),
        formwork_env(redis_url, upstream, work),
    )
    service = f"http://127.0.0.1:{service_port}"
    wait_until(procs, http_ok(service + "/healthz"), "formwork")
    entry_prefix, chat_body = prepare(service, upstream)

    reference_env = env | {
        "REFERENCE_REDIS_URL": redis_url,
        "REFERENCE_KEY": cache_entry_key(redis_url, entry_prefix),
    }
    procs.spawn(
        "reference",
        uvicorn_args("bench.reference_app:create_app", reference_port, args.workers),
        reference_env,
    )
    reference = f"http://127.0.0.1:{reference_port}"
    wait_until(procs, http_ok(reference + "/docs"), "reference")
    answer = httpx.post(
        f"{reference}/v1/tasks/{TASK}/run", content=run_body("use"), headers=JSON
    ).json()
    expect(answer.get("output") == json.loads(ANSWER), "reference", answer)

    path = f"/v1/tasks/{TASK}/run"
    fw, ref, c = procs.pid("formwork"), procs.pid("reference"), args.concurrency
    loads = {
        "formwork": Load("hit-formwork", service + path, run_body("use"), c, fw),
        "reference": Load("hit-reference", reference + path, run_body("use"), c, ref),
        "direct": Load("miss-direct", upstream.base_url + "/chat/completions", chat_body, 1),
        "bypass": Load("miss-formwork", service + path, run_body("bypass"), 1, fw),
    }
    for load in loads.values():
        print(f"warm-up {load.name} ({args.warmup:g} s)", file=sys.stderr)
        wrk(load, args.warmup, work)

    hits: dict[str, list[Sample]] = {"formwork": [], "reference": []}
    misses: dict[str, list[Sample]] = {"direct": [], "formwork": []}
    for n in range(args.rounds):
        order = ["formwork", "reference"] if n % 2 == 0 else ["reference", "formwork"]
        for name in order:
            sample = wrk(loads[name], args.duration, work)
            hits[name].append(sample)
            print(f"round {n + 1} {name} hits: {sample.rps:,.0f} req/s", file=sys.stderr)
    for n in range(args.rounds):
        order = ["direct", "bypass"] if n % 2 == 0 else ["bypass", "direct"]
        for name in order:
            upstream.reset()  # also drops the request bodies it keeps
            upstream.set_default("*", Reply(content=ANSWER))
            sample = wrk(loads[name], args.duration, work)
            if upstream.calls() < sample.requests:  # every measured run reached the upstream
                raise RuntimeError(f"{name}: {sample.requests} runs, {upstream.calls()} calls")
            misses["formwork" if name == "bypass" else "direct"].append(sample)
            print(f"round {n + 1} {name} miss: p50 {sample.p50_ms:.2f} ms", file=sys.stderr)
    procs.check()
    if args.profile is not None:
        profile(args, procs.pid("formwork"), [loads["formwork"], loads["bypass"]], work)
    return report(args, hits, misses, (load_before, load_average()))


def profile(args: argparse.Namespace, pid: int, loads: list[Load], work: Path) -> None:
    """Sample the service (every worker) with py-spy while wrk loads it; not part of the table."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    args.profile.mkdir(parents=True, exist_ok=True)
    for load in loads:
        out = args.profile / f"{load.name}.txt"
        record = [spy, "record", "--pid", str(pid), "--subprocesses", "--nonblocking"]
        record += ["--rate", "250", "--format", "raw", "--output", str(out)]
        record += ["--duration", str(int(args.duration))]
        with subprocess.Popen(record, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as spy_:
            time.sleep(0.5)
            sample = wrk(load, args.duration, work)
            spy_.wait(timeout=args.duration + 30)
        print(f"profiled {load.name} ({sample.rps:,.0f} req/s): {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
