"""What a shadow candidate costs the caller: run latency with and without a slow shadow.

One process serves Formwork (uvicorn in a thread, a redis-server of its own, the scripted
upstream of ``tests/upstream.py``); the task's route answers after ``--route-ms`` and the shadow
candidate after ``--candidate-ms`` (much slower). Each scenario sends the same requests (cache
bypassed), one at a time and then ``--concurrency`` at a time:

- ``none``: no candidate;
- ``shadow``: a shadow candidate on every request (share 1), cap ``--cap`` per replica;
- ``shadow, cap 1``: the same with a cap of one call in flight (most are dropped).

Run from the repository root::

    .venv/bin/python bench/shadow.py --requests 200      # writes bench/shadow.md
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from formwork.config import LocalModelSettings, ProviderSettings, Settings  # noqa: E402
from tests.conftest import live_server  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402
from tests.service.helpers import GOOD, spec  # noqa: E402
from tests.upstream import Reply, Upstream  # noqa: E402


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--route-ms", type=float, default=20.0)
    parser.add_argument("--candidate-ms", type=float, default=500.0)
    parser.add_argument("--cap", type=int, default=16)
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "shadow.md")
    args = parser.parse_args()

    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp, Upstream() as upstream:
        server = RedisServer.launch(Path(tmp))
        try:
            schemas = Path(tmp) / "schemas"
            schemas.mkdir()
            settings = Settings(
                redis_url=SecretStr(server.url),
                providers={"up": ProviderSettings(base_url=upstream.base_url)},
                local=LocalModelSettings(enabled=False),
                schemas_dir=schemas,
                log_level="WARNING",
            )
            upstream.set_default("primary", Reply(content=GOOD, delay_s=args.route_ms / 1000))
            upstream.set_default("cand", Reply(content=GOOD, delay_s=args.candidate_ms / 1000))
            route = {"model": "up/cand", "max_attempts": 1, "timeout_s": 30}
            rule = {"min_comparisons": 1_000_000}
            shadow = {"route": route, "mode": "shadow", "share": 1.0, "rule": rule}
            cases = {
                "none": spec("up/primary"),
                "shadow": spec("up/primary", candidate=shadow | {"max_concurrency": args.cap}),
                "shadow, cap 1": spec("up/primary", candidate=shadow | {"max_concurrency": 1}),
            }
            with live_server(settings) as url:
                for n, (name, body) in enumerate(cases.items()):
                    task = f"bench-shadow-{n}"
                    httpx.put(f"{url}/v1/tasks/{task}", json=body).raise_for_status()
                    results[name] = scenario(url, task, args.requests, args.concurrency)
                    time.sleep(args.candidate_ms / 1000 + 0.5)  # let the last shadows end
        finally:
            server.stop()

    lines = [
        "# Shadow candidates: the caller's latency",
        "",
        f"`bench/shadow.py --requests {args.requests} --concurrency {args.concurrency} "
        f"--route-ms {args.route_ms:g} --candidate-ms {args.candidate_ms:g} --cap {args.cap}`, "
        f"{datetime.date.today()}, {platform.machine()}, Python {platform.python_version()}.",
        "",
        f"The task's route answers after {args.route_ms:g} ms, the shadow candidate after "
        f"{args.candidate_ms:g} ms. Latency of `POST /v1/tasks/{{task}}/run` as the caller sees "
        "it (ms, cache bypassed), one request at a time and "
        f"{args.concurrency} at a time; the server, the upstream and the client share one "
        "process.",
        "",
        "| scenario | mean | p50 | p95 | p99 |",
        "|---|---|---|---|---|",
    ]
    for name, found in results.items():
        lines.append(row(f"{name}, sequential", found["one"]))
        lines.append(row(f"{name}, {args.concurrency} concurrent", found["many"]))
    lines += ["", "| scenario | comparisons | dropped |", "|---|---|---|"]
    for name, found in results.items():
        figures = found["figures"]
        if figures:
            lines.append(f"| {name} | {figures['comparisons']} | {figures['drops']} |")
    text = "\n".join(lines) + "\n"
    print(text)
    args.output.write_text(text)


if __name__ == "__main__":
    main()
