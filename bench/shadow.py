"""What a shadow candidate costs the caller: run latency with and without a slow shadow.

Three processes on loopback: a redis-server of its own, the scripted upstream of
``tests/upstream.py`` (this script with ``--serve-upstream``) and Formwork (``uvicorn
service.app:create_app --factory``, one worker); this process is the client. The task's route
answers after ``--route-ms`` and the shadow candidate after ``--candidate-ms`` (much slower).
Each scenario sends the same requests (cache bypassed), one at a time and then
``--concurrency`` at a time:

- ``none``: no candidate;
- ``shadow``: a shadow candidate on every request (share 1), cap ``--cap`` per replica;
- ``shadow, cap 1``: the same with a cap of one call in flight (most are dropped).

Run from the repository root::

    .venv/bin/python bench/shadow.py --requests 300      # writes bench/shadow.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.redis_server import RedisServer  # noqa: E402
from tests.service.helpers import GOOD, spec  # noqa: E402
from tests.upstream import Reply, Upstream  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def serve_upstream(port_file: Path, route_ms: float, candidate_ms: float) -> None:
    """The scripted upstream, until this process is terminated."""
    with Upstream() as upstream:
        upstream.set_default("primary", Reply(content=GOOD, delay_s=route_ms / 1000))
        upstream.set_default("cand", Reply(content=GOOD, delay_s=candidate_ms / 1000))
        port_file.write_text(str(upstream.port))
        signal.sigwait({signal.SIGTERM, signal.SIGINT})


def wait_http(url: str, what: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not start")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used (``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def timed(client: httpx.Client, task: str, n: int) -> float:
    body = {"input": f"message {n}", "options": {"cache": "bypass"}}
    t0 = time.perf_counter()
    response = client.post(f"/v1/tasks/{task}/run", json=body)
    elapsed = (time.perf_counter() - t0) * 1000
    if response.status_code != 200 or response.json()["model"] != "up/primary":
        raise RuntimeError(f"unexpected answer: {response.status_code} {response.text[:200]}")
    return elapsed


def scenario(url: str, task: str, requests: int, concurrency: int) -> dict[str, Any]:
    with httpx.Client(base_url=url, timeout=30) as client:
        for n in range(10):  # warm-up
            timed(client, task, n)
        one = [timed(client, task, n) for n in range(requests)]
        with ThreadPoolExecutor(concurrency) as pool:
            many = list(pool.map(lambda n: timed(client, task, n), range(requests)))
        figures = client.get(f"/v1/tasks/{task}/candidate").json()["figures"]
    return {"one": one, "many": many, "figures": figures}


def row(name: str, values: list[float]) -> str:
    return (
        f"| {name} | {statistics.mean(values):.1f} | {quantile(values, 0.5):.1f} | "
        f"{quantile(values, 0.95):.1f} | {quantile(values, 0.99):.1f} |"
    )


def measure(args: argparse.Namespace, work: Path) -> dict[str, dict[str, Any]]:
    redis_server = RedisServer.launch(work)
    port_file = work / "upstream.port"
    me = [sys.executable, __file__, "--route-ms", str(args.route_ms)]
    me += ["--candidate-ms", str(args.candidate_ms), "--serve-upstream", str(port_file)]
    processes = [subprocess.Popen(me)]
    try:
        while not port_file.exists():
            time.sleep(0.05)
        (work / "schemas").mkdir()
        port = free_port()
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "FORMWORK_CONFIG": str(work / "absent.toml"),
            "FORMWORK_REDIS_URL": redis_server.url,
            "FORMWORK_PROVIDERS__UP__BASE_URL": f"http://127.0.0.1:{port_file.read_text()}/v1",
            "FORMWORK_PROVIDERS__UP__API_KEY": "sk-bench",
            "FORMWORK_LOCAL__ENABLED": "false",
            "FORMWORK_SCHEMAS_DIR": str(work / "schemas"),
            "FORMWORK_LOG_LEVEL": "WARNING",
        }
        uvicorn = [sys.executable, "-m", "uvicorn", "service.app:create_app", "--factory"]
        uvicorn += ["--port", str(port), "--log-level", "warning", "--no-access-log"]
        processes.append(subprocess.Popen(uvicorn, env=env, cwd=ROOT))
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/healthz", "formwork")
        route = {"model": "up/cand", "max_attempts": 1, "timeout_s": 30}
        shadow = {"route": route, "mode": "shadow", "share": 1.0}
        shadow["rule"] = {"min_comparisons": 1_000_000}
        cases = {
            "none": spec("up/primary"),
            "shadow": spec("up/primary", candidate=shadow | {"max_concurrency": args.cap}),
            "shadow, cap 1": spec("up/primary", candidate=shadow | {"max_concurrency": 1}),
        }
        results = {}
        for n, (name, body) in enumerate(cases.items()):
            task = f"bench-shadow-{n}"
            httpx.put(f"{url}/v1/tasks/{task}", json=body).raise_for_status()
            before = cpu_s(processes[1].pid)
            results[name] = scenario(url, task, args.requests, args.concurrency)
            time.sleep(args.candidate_ms / 1000 + 0.5)  # let the last shadows end
            spent = cpu_s(processes[1].pid) - before
            results[name]["cpu_ms"] = spent * 1000 / (2 * args.requests + 10)
        return results
    finally:
        for process in reversed(processes):
            process.terminate()
            process.wait(10)
        redis_server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--route-ms", type=float, default=20.0)
    parser.add_argument("--candidate-ms", type=float, default=500.0)
    parser.add_argument("--cap", type=int, default=16)
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "shadow.md")
    parser.add_argument("--serve-upstream", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        serve_upstream(args.serve_upstream, args.route_ms, args.candidate_ms)
        return
    with tempfile.TemporaryDirectory() as tmp:
        results = measure(args, Path(tmp))

    lines = [
        "# Shadow candidates: the caller's latency",
        "",
        f"`bench/shadow.py --requests {args.requests} --concurrency {args.concurrency} "
        f"--route-ms {args.route_ms:g} --candidate-ms {args.candidate_ms:g} --cap {args.cap}`, "
        f"{datetime.date.today()}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}.",
        "",
        f"The task's route answers after {args.route_ms:g} ms, the shadow candidate after "
        f"{args.candidate_ms:g} ms (the scripted upstream, its own process). Latency of "
        "`POST /v1/tasks/{task}/run` as the caller sees it (ms, cache bypassed), one request "
        f"at a time and {args.concurrency} at a time, against one Formwork worker.",
        "",
        "| scenario | mean | p50 | p95 | p99 |",
        "|---|---|---|---|---|",
    ]
    for name, found in results.items():
        lines.append(row(f"{name}, sequential", found["one"]))
        lines.append(row(f"{name}, {args.concurrency} concurrent", found["many"]))
    lines += [
        "",
        "| scenario | Formwork CPU per request | comparisons | dropped |",
        "|---|---|---|---|",
    ]
    for name, found in results.items():
        figures = found["figures"] or {"comparisons": 0, "drops": 0}
        lines.append(
            f"| {name} | {found['cpu_ms']:.1f} ms | {figures['comparisons']} | {figures['drops']} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    args.output.write_text(text)


if __name__ == "__main__":
    main()
