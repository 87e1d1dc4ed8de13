"""``formwork``: serve the API, manage tasks, run them, and (``train``) fine-tune models.

Client commands talk to a running server: ``--url`` (``FORMWORK_URL``, default
http://127.0.0.1:8000) with ``--key`` (``FORMWORK_API_KEY``) when the server wants one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from formwork.auth import new_key

from .middleware import is_loopback


class Client:
    def __init__(self, url: str, key: str | None, timeout: float) -> None:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        try:
            response = self._http.request(method, path, json=body)
        except httpx.TransportError as e:
            raise SystemExit(
                f"formwork: cannot reach {self._http.base_url} ({type(e).__name__}); "
                "is `formwork serve` running?"
            ) from e
        if response.status_code >= 400:
            raise SystemExit(problem_text(response))
        return response.json() if response.content else None


def problem_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"formwork: HTTP {response.status_code}"
    lines = [
        f"formwork: {body.get('title', 'error')} ({response.status_code}): {body.get('detail', '')}"
    ]
    lines += [f"  {e['path']}: {e['message']}" for e in body.get("errors", [])]
    for a in body.get("attempts", []):
        errors = "; ".join(e["message"] for e in a.get("errors", [])[:3])
        lines.append(f"  attempt {a['model']}: {a['outcome']} {errors}".rstrip())
    return "\n".join(lines)


def parse_input(text: str) -> Any:
    """JSON when it parses as JSON, else the text itself; ``-`` reads standard input."""
    if text == "-":
        text = sys.stdin.read()
    try:
        return json.loads(text)
    except ValueError:
        return text


def emit(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from formwork.config import Settings

    settings = Settings()
    insecure = args.insecure_no_auth or settings.insecure_no_auth
    if not settings.api_keys and not insecure and not is_loopback(args.host):
        print(
            f"formwork: refusing to serve on {args.host} without API keys. Configure keys "
            "(formwork keys new) or pass --insecure-no-auth when your own auth sits in front.",
            file=sys.stderr,
        )
        return 2
    if insecure:
        os.environ["FORMWORK_INSECURE_NO_AUTH"] = "true"
    uvicorn.run(
        "service.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_config=None,
        access_log=False,
    )
    return 0


def cmd_tasks(args: argparse.Namespace, client: Client) -> int:
    if args.action == "list":
        for task in client.call("GET", "/v1/tasks"):
            models = ", ".join(task["models"]) or "(default)"
            print(f"{task['task']:<28} v{task['version']:<4} {models}  {task['description'][:60]}")
    elif args.action == "show":
        emit(client.call("GET", f"/v1/tasks/{args.name}"))
    elif args.action == "delete":
        client.call("DELETE", f"/v1/tasks/{args.name}")
        print(f"deleted {args.name}")
    elif args.action == "apply":
        for file in args.files:
            spec = json.loads(Path(file).read_text())
            name = spec.pop("name", None) or Path(file).stem
            result = client.call("PUT", f"/v1/tasks/{name}", spec)
            state = (
                "created" if result["created"] else "updated" if result["changed"] else "unchanged"
            )
            print(f"{name}: version {result['version']} ({state})")
            for warning in result.get("warnings", []):
                print(f"  warning: {warning}")
    return 0


def cmd_run(args: argparse.Namespace, client: Client) -> int:
    options: dict[str, str] = {"cache": args.cache}
    if args.route:
        options["route"] = args.route
    body = {"input": parse_input(args.input), "options": options}
    result = client.call("POST", f"/v1/tasks/{args.task}/run", body)
    emit(result if args.full else result["output"])
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    key, digest = new_key()
    scopes = json.dumps(args.scopes.split(","))
    print(f"key (give it to the client; it is not stored): {key}")
    print(f"FORMWORK_API_KEYS__{args.name.upper()}__SHA256={digest}")
    print(f"FORMWORK_API_KEYS__{args.name.upper()}__SCOPES='{scopes}'")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="formwork", description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("FORMWORK_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--key", default=os.environ.get("FORMWORK_API_KEY"), help="API key")
    parser.add_argument("--timeout", type=float, default=120.0, help="HTTP timeout, seconds")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve the HTTP API")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--insecure-no-auth", action="store_true", help="allow no keys off loopback")

    tasks = sub.add_parser("tasks", help="list, show, apply or delete task definitions")
    actions = tasks.add_subparsers(dest="action", required=True)
    actions.add_parser("list")
    actions.add_parser("show").add_argument("name")
    actions.add_parser("delete").add_argument("name")
    actions.add_parser("apply").add_argument("files", nargs="+", help="task JSON files")

    run = sub.add_parser("run", help="run a task on an input (JSON, or text; - for stdin)")
    run.add_argument("task")
    run.add_argument("input")
    run.add_argument("--cache", choices=["use", "refresh", "bypass"], default="use")
    run.add_argument("--route", help="run on this model only (provider/model-id)")
    run.add_argument("--full", action="store_true", help="print the whole answer, not just output")

    keys = sub.add_parser("keys", help="make an API key")
    keys_actions = keys.add_subparsers(dest="action", required=True)
    new = keys_actions.add_parser("new")
    new.add_argument("--name", default="client")
    new.add_argument("--scopes", default="run,read", help="comma-separated: run, read, admin")

    from training.cli import add_train_parser

    add_train_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return cmd_serve(args)
    if args.command == "keys":
        return cmd_keys(args)
    if args.command == "train":
        from training.cli import run_train

        return run_train(args)
    client = Client(args.url, args.key, args.timeout)
    if args.command == "tasks":
        return cmd_tasks(args, client)
    return cmd_run(args, client)


if __name__ == "__main__":
    sys.exit(main())
