"""The whole loop on the shipped contact-extraction task: from its base route to a promoted local
adapter, driven by replayed traffic.

Processes on loopback: a redis-server of its own (or ``--redis-url``), Formwork (``uvicorn
service.app:create_app --factory``, one worker, the embedded model) and ``formwork train
compile`` (the CLI, on the same Redis); this process is the client. Every path the run writes
(adapters, fine-tune folders, datasets) is in a temporary folder.

1. The task is registered from ``schemas/contact-extraction.json`` with its base route only:
   the embedded model with the long ``instructed`` prompt, constrained (the shipped adapter's
   route is left out: the loop makes its own).
2. **Before**: the first ``--paired`` requests of the traffic file
   (``training/data/contact-extraction.traffic.jsonl``: generated like the dataset, inputs of
   neither split, with their expected answers) are sent one at a time, cache bypassed.
3. **Compile**: ``formwork train compile contact-extraction --jsonl <train> --test <test>
   --no-examples --shadow --min-comparisons N`` with the compile's defaults otherwise; while its
   ``shadow`` step waits, the rest of the traffic file is replayed (cycling) until it ends.
4. **After**: the same ``--paired`` requests again, on the version the rule promoted.

For each phase: schema-valid rate, field accuracy against the expected answers, prompt and
completion tokens per request, latency, and the format tax (attempts beyond a used first
attempt: their tokens and time, as the service counts it). The compile's steps come from its
record (wall time per step), its held-out and live figures likewise.

    .venv/bin/python bench/loop.py --out bench/loop.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.shadow import free_port, quantile  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

TASK = "contact-extraction"
DATA = ROOT / "training" / "data"
FIELDS = ("name", "email", "phone", "company", "title")
READY_S = 300.0


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paired", type=int, default=40, help="requests before and after")
    parser.add_argument("--min-comparisons", type=int, default=40, help="the shadow rule's")
    parser.add_argument("--train", type=Path, default=DATA / f"{TASK}.train.jsonl")
    parser.add_argument("--test", type=Path, default=DATA / f"{TASK}.test.jsonl")
    parser.add_argument("--redis-url", help="default: a redis-server of its own")
    parser.add_argument("--out", type=Path, help="the markdown report (default: print it)")
    parser.add_argument("--rows", type=Path, help="every request and the compile, as JSON")
    parser.add_argument("--compile-args", nargs=argparse.REMAINDER, default=[])
    return parser.parse_args()


def wait_ready(url: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < READY_S:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("formwork did not become ready")


def rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def base_spec() -> dict[str, Any]:
    task = json.loads((ROOT / "schemas" / f"{TASK}.json").read_text())
    task.pop("name", None)
    base = [r for r in task["routes"] if "+" not in r["model"]]
    task["routes"] = [{**base[0], "prompt": "instructed", "constrained": True}]
    return task


def request(client: httpx.Client, row: dict[str, Any]) -> dict[str, Any]:
    """One request as the caller sees it, scored against the row's expected answer."""
    body = {"input": row["input"], "options": {"cache": "bypass"}}
    t0 = time.perf_counter()
    response = client.post(f"/v1/tasks/{TASK}/run", json=body)
    latency_ms = (time.perf_counter() - t0) * 1000
    case: dict[str, Any] = {"latency_ms": latency_ms, "status": response.status_code}
    if response.status_code != 200:
        case.update(valid=False, fields=0.0, model=None, attempts=[])
        return case
    result = response.json()
    output, expected = result["output"], row["output"]
    attempts = result["attempts"]
    used_first = len(attempts) == 1  # the first attempt's output was the answer
    taxed = attempts[1:] if used_first else attempts
    case.update(
        valid=True,
        model=result["model"],
        version=result["version"],
        fields=sum(output.get(f) == expected.get(f) for f in FIELDS) / len(FIELDS),
        exact=output == expected,
        prompt_tokens=result["usage"]["prompt_tokens"],
        completion_tokens=result["usage"]["completion_tokens"],
        attempts=[a["outcome"] for a in attempts],
        tax_tokens=sum(
            a["usage"]["prompt_tokens"] + a["usage"]["completion_tokens"] for a in taxed
        ),
        tax_ms=sum(a["latency_ms"] for a in taxed),
    )
    return case


def summary(cases: list[dict[str, Any]]) -> dict[str, Any]:
    answered = [c for c in cases if c["valid"]]
    n = len(cases)

    def mean(key: str) -> float:
        return statistics.mean(c[key] for c in answered) if answered else float("nan")

    latencies = [c["latency_ms"] for c in cases]
    return {
        "requests": n,
        "valid": len(answered) / n,
        "fields": sum(c["fields"] for c in cases) / n,
        "exact": sum(bool(c.get("exact")) for c in cases) / n,
        "prompt_tokens": mean("prompt_tokens"),
        "completion_tokens": mean("completion_tokens"),
        "latency_p50": quantile(latencies, 0.5),
        "latency_p95": quantile(latencies, 0.95),
        "tax_tokens": sum(c.get("tax_tokens", 0) for c in cases) / n,
        "tax_ms": sum(c.get("tax_ms", 0.0) for c in cases) / n,
        "re_asked": sum(len(c["attempts"]) > 1 for c in cases),
        "models": sorted({c["model"] for c in answered}),
    }


class Replayer(threading.Thread):
    """Replays traffic while the compile's shadow step waits, until told to stop."""

    def __init__(self, url: str, traffic: list[dict[str, Any]]) -> None:
        super().__init__(daemon=True)
        self.url, self.traffic = url, traffic
        self.cases: list[dict[str, Any]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=300) as client:
            n = 0
            while not self.stop.is_set():
                state = client.get(f"/v1/tasks/{TASK}/compile")
                job = state.json() if state.status_code == 200 else {}
                if job.get("step") != "shadow" or job.get("shadow_version") is None:
                    time.sleep(1.0)
                    continue
                self.cases.append(request(client, self.traffic[n % len(self.traffic)]))
                n += 1


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    redis_server = None
    if args.redis_url:
        redis_url = args.redis_url
    else:
        redis_server = RedisServer.launch(work)
        redis_url = redis_server.url
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "FORMWORK_CONFIG": str(work / "absent.toml"),
        "FORMWORK_REDIS_URL": redis_url,
        "FORMWORK_SCHEMAS_DIR": str(work / "schemas"),
        "FORMWORK_LOCAL__ADAPTERS_DIR": str(work / "adapters"),
        "FORMWORK_TRAINING__DATA_DIR": str(work / "datasets"),
        "FORMWORK_TRAINING__POLL_INTERVAL_S": "2",
        "FORMWORK_LOG_LEVEL": "WARNING",
    }
    (work / "schemas").mkdir()
    traffic = rows(DATA / f"{TASK}.traffic.jsonl")
    paired, replayed = traffic[: args.paired], traffic[args.paired :]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    uvicorn = [sys.executable, "-m", "uvicorn", "service.app:create_app", "--factory"]
    uvicorn += ["--port", str(port), "--log-level", "warning", "--no-access-log"]
    server = subprocess.Popen(uvicorn, env=env, cwd=ROOT)
    try:
        ready_s = wait_ready(url)
        with httpx.Client(base_url=url, timeout=300) as client:
            client.put(f"/v1/tasks/{TASK}", json=base_spec()).raise_for_status()
            started = time.time()
            before = [request(client, row) for row in paired]
            print(f"before: {json.dumps(summary(before))}", file=sys.stderr)
            replayer = Replayer(url, replayed)
            replayer.start()
            command = [str(Path(sys.executable).parent / "formwork"), "train", "compile", TASK]
            command += ["--jsonl", str(args.train), "--test", str(args.test), "--no-examples"]
            command += ["--shadow", "--min-comparisons", str(args.min_comparisons)]
            command += [*args.compile_args, "--json"]
            t0 = time.monotonic()
            done = subprocess.run(
                command, env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True, check=False
            )
            compile_s = time.monotonic() - t0
            replayer.stop.set()
            replayer.join()
            job = json.loads(done.stdout) if done.stdout.strip() else {}
            after = [request(client, row) for row in paired]
            print(f"after: {json.dumps(summary(after))}", file=sys.stderr)
            decisions = client.get(f"/v1/tasks/{TASK}/decisions").json()
        return {
            "ready_s": ready_s,
            "started": started,
            "compile_s": compile_s,
            "compile_rc": done.returncode,
            "command": [part.replace(f"{ROOT}/", "") for part in command[2:]],
            "job": job,
            "decisions": decisions,
            "before": before,
            "shadowed": replayer.cases,
            "after": after,
        }
    finally:
        server.terminate()
        server.wait(30)
        if redis_server is not None:
            redis_server.stop()


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def report(args: argparse.Namespace, run: dict[str, Any]) -> str:
    job = run["job"]
    before, after = summary(run["before"]), summary(run["after"])
    shadowed = summary(run["shadowed"]) if run["shadowed"] else None
    when = datetime.date.today().isoformat()
    load = os.getloadavg()
    lines = [
        "# The whole loop: contact-extraction from its base route to a promoted adapter",
        "",
        f"`.venv/bin/python bench/loop.py --paired {args.paired} "
        f"--min-comparisons {args.min_comparisons} --out bench/loop.md` — {when}, "
        f"{platform.machine()}, Python {platform.python_version()}, {os.cpu_count()} cores "
        f"(load average at the end {load[0]:.1f}).",
        "",
        f"The compile, as run: `formwork train {' '.join(run['command'])}` (paths shortened "
        "to the repository's).",
        "",
        "## The compile, step by step",
        "",
        "| step | status | wall time | detail |",
        "|---|---|---|---|",
    ]
    for step in job.get("steps", []):
        took = (
            f"{step['ended_at'] - step['started_at']:.0f} s"
            if step.get("started_at") and step.get("ended_at")
            else "-"
        )
        detail = step["detail"].replace("|", "\\|").replace(str(ROOT) + "/", "")
        lines.append(f"| {step['name']} | {step['status']} | {took} | {detail} |")
    lines += [
        f"| **all** | {job.get('status', 'n/a')} | **{run['compile_s'] / 60:.1f} min** | "
        f"exit {run['compile_rc']}, target 15 min |",
        "",
        "## Before and after",
        "",
        "The same requests (`--paired`) before the compile and after the promotion; during the "
        "shadow step, the callers' requests while the candidate shadowed them.",
        "",
        "| | before | during shadow | after |",
        "|---|---|---|---|",
    ]
    phases = [before, shadowed, after]

    def line(name: str, key: str, fmt: str) -> str:
        cells = ["-" if p is None else format(p[key], fmt) for p in phases]
        return f"| {name} | " + " | ".join(cells) + " |"

    lines += [
        line("requests", "requests", "d"),
        "| route | "
        + " | ".join("-" if p is None else ", ".join(p["models"]) for p in phases)
        + " |",
        line("schema-valid", "valid", ".1%"),
        line("field accuracy (expected answers)", "fields", ".1%"),
        line("exact answers", "exact", ".1%"),
        line("prompt tokens / request", "prompt_tokens", ".0f"),
        line("completion tokens / request", "completion_tokens", ".1f"),
        line("latency p50, ms", "latency_p50", ".0f"),
        line("latency p95, ms", "latency_p95", ".0f"),
        line("format tax: tokens / request", "tax_tokens", ".1f"),
        line("format tax: ms / request", "tax_ms", ".0f"),
        line("requests re-asked or fallen back", "re_asked", "d"),
    ]
    cut = 1 - after["prompt_tokens"] / before["prompt_tokens"]
    lines += ["", f"Prompt tokens per request: {cut:.0%} fewer after the promotion.", ""]
    cand, cur, live = job.get("candidate"), job.get("current"), job.get("live")
    if cand and cur:
        lines += [
            "## Held-out (the `eval` step) and live (the `shadow` step) figures",
            "",
            "| | held-out: candidate | held-out: current | live: candidate | live: current |",
            "|---|---|---|---|---|",
        ]
        lc = live["candidate"] if live else {}
        lu = live["current"] if live else {}
        lines += [
            f"| model | {cand['model']} | {cur['model']} | candidate | current |",
            f"| schema-valid | {pct(cand['valid_rate'])} | {pct(cur['valid_rate'])} | "
            f"{pct(lc.get('valid_rate'))} | {pct(lu.get('valid_rate'))} |",
            f"| field accuracy / agreement | {pct(cand['field_accuracy'])} | "
            f"{pct(cur['field_accuracy'])} | {pct(live and live['field_agreement'])} "
            "(with the current route's answers) | - |",
            f"| prompt tokens | {cand['prompt_tokens']:.0f} | {cur['prompt_tokens']:.0f} | "
            f"{(lc.get('prompt_tokens_mean') or 0):.0f} | "
            f"{(lu.get('prompt_tokens_mean') or 0):.0f} |",
            f"| latency | p50 {cand['latency_ms_p50']:.0f} ms | p50 {cur['latency_ms_p50']:.0f} ms"
            f" | mean {(lc.get('latency_ms_mean') or 0):.0f} ms | "
            f"mean {(lu.get('latency_ms_mean') or 0):.0f} ms |",
            "",
        ]
    lines += ["## Decisions (newest first)", ""]
    for d in run["decisions"]:
        lines.append(
            f"- **{d['action']}** `{d['model']}` v{d['from_version']} → v{d['version']}: "
            f"{d['reason']}"
        )
    lines += ["", f"Server ready {run['ready_s']:.1f} s after start."]
    return "\n".join(lines) + "\n"


def main() -> None:
    args = arguments()
    with tempfile.TemporaryDirectory(prefix="formwork-loop-") as folder:
        run = measure(args, Path(folder))
    if args.rows:
        args.rows.parent.mkdir(parents=True, exist_ok=True)
        args.rows.write_text(json.dumps(run, indent=1))
    text = report(args, run)
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
