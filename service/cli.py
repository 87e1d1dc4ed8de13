"""``formwork``: serve the API, manage tasks, run them, and (``train``) fine-tune models.

Client commands talk to a running server: ``--url`` (``FORMWORK_URL``, default
http://127.0.0.1:8000) with ``--key`` (``FORMWORK_API_KEY``) when the server wants one; both go
before or after the command. Errors are one line (and their details) on stderr: exit 1, 2 for a
usage error, 130 when interrupted. Imports are lazy so that a client command starts at once.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import sys
from collections.abc import Sequence
from typing import NoReturn

DEFAULT_URL = "http://127.0.0.1:8000"
CHOICE = re.compile(r"invalid choice: '([^']*)' \(choose from (.*)\)")


class Parser(argparse.ArgumentParser):
    """argparse that suggests the closest verb for a mistyped one."""

    def error(self, message: str) -> NoReturn:
        found = CHOICE.search(message)
        if found:
            choices = re.findall(r"'([^']*)'", found.group(2))
            close = difflib.get_close_matches(found.group(1), choices, n=1)
            if close:
                message += f"; did you mean {close[0]!r}?"
        super().error(message)


def common_options(*, defaults: bool) -> argparse.ArgumentParser:
    """``--url``, ``--key``, ``--timeout``: with their defaults on the top parser, and
    accepted again (without defaults, so they only override) after each command."""
    given: dict[str, object] = {} if defaults else {"default": argparse.SUPPRESS}
    url = os.environ.get("FORMWORK_URL", DEFAULT_URL)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", **({"default": url} if defaults else given), help="server URL")
    common.add_argument(
        "--key", **({"default": os.environ.get("FORMWORK_API_KEY")} if defaults else given)
    )
    common.add_argument(
        "--timeout", type=float, **({"default": 120.0} if defaults else given), help="seconds"
    )
    return common


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from formwork.config import Settings

    from .middleware import is_loopback

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


def cmd_keys(args: argparse.Namespace) -> int:
    from formwork.auth import new_key

    key, digest = new_key()
    scopes = json.dumps(args.scopes.split(","))
    print(f"key (give it to the client; it is not stored): {key}")
    print(f"FORMWORK_API_KEYS__{args.name.upper()}__SHA256={digest}")
    print(f"FORMWORK_API_KEYS__{args.name.upper()}__SCOPES='{scopes}'")
    return 0


def add_client_commands(sub: argparse._SubParsersAction[Parser], common: Parser) -> None:
    tasks = sub.add_parser("tasks", help="list, show, apply or delete task definitions")
    actions = tasks.add_subparsers(dest="action", required=True, parser_class=Parser)
    actions.add_parser("list", parents=[common])
    actions.add_parser("show", parents=[common]).add_argument("name")
    actions.add_parser("delete", parents=[common]).add_argument("name")
    actions.add_parser(
        "apply", parents=[common], help="register task files (name: the file's, else its stem)"
    ).add_argument("files", nargs="+", help="task JSON files")

    run = sub.add_parser(
        "run", parents=[common], help="run a task on an input (JSON, or text; - for stdin)"
    )
    run.add_argument("task")
    run.add_argument("input")
    run.add_argument("--cache", choices=["use", "refresh", "bypass"], default="use")
    run.add_argument("--route", help="run on this model only (provider/model-id)")
    run.add_argument("--full", action="store_true", help="print the whole answer, not just output")

    batch = sub.add_parser(
        "batch", parents=[common], help="run a JSONL file of inputs (one a line) as a batch"
    )
    batch.add_argument("task")
    batch.add_argument("file", help="JSONL inputs; - for stdin")
    batch.add_argument("--out", help="write the results (JSONL, input order) here, not stdout")
    batch.add_argument("--cache", choices=["use", "refresh", "bypass"], default="use")
    batch.add_argument("--full", action="store_true", help="every field of every result")


def build_parser(argv: Sequence[str]) -> Parser:
    parser = Parser(
        prog="formwork",
        description=(__doc__ or "").splitlines()[0],
        parents=[common_options(defaults=True)],
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    serve = sub.add_parser("serve", help="serve the HTTP API")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--insecure-no-auth", action="store_true", help="allow no keys off loopback")
    add_client_commands(sub, Parser(add_help=False, parents=[common_options(defaults=False)]))
    keys = sub.add_parser("keys", help="make an API key")
    keys_actions = keys.add_subparsers(dest="action", required=True, parser_class=Parser)
    new = keys_actions.add_parser("new")
    new.add_argument("--name", default="client")
    new.add_argument("--scopes", default="run,read", help="comma-separated: run, read, admin")
    if "train" in argv:  # the training commands import much more: only when asked for
        from training.cli import add_train_parser

        add_train_parser(sub)  # type: ignore[arg-type]
    else:
        sub.add_parser("train", help="build datasets and fine-tune models for a task")
    return parser


def dispatch(args: argparse.Namespace) -> int:
    if args.command == "serve":
        return cmd_serve(args)
    if args.command == "keys":
        return cmd_keys(args)
    if args.command == "train":
        from training.cli import run_train

        return run_train(args)
    from .commands import run_client_command

    return run_client_command(args)


def main(argv: Sequence[str] | None = None) -> int:
    given = list(sys.argv[1:] if argv is None else argv)
    from .commands import CommandError

    try:
        args = build_parser(given).parse_args(given)
        code = dispatch(args)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return code
    except CommandError as e:
        print(f"formwork: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("formwork: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `formwork tasks list | head`: the reader left; say nothing
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
