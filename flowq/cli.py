"""The `flowq` command (SPEC section 3)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, redirect_stdout
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

import yaml

from flowq import states as S
from flowq.cli_servers import cmd_api, cmd_db, cmd_flower, cmd_worker
from flowq.errors import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    Conflict,
    FlowqError,
    InvalidTransition,
    NotFound,
    UsageError,
    ValidationError,
    WaitTimeout,
)
from flowq.settings import Settings

STORE_RETRY_SECONDS = 15.0  # how long a command retries a lost store (a Postgres restart)
# Celery's pools (gevent and eventlet need their package installed)
POOLS = ("prefork", "threads", "solo", "processes", "eventlet", "gevent", "custom")
STATE_MARK = {
    "queued": "…",
    "running": "▶",
    "retrying": "↻",
    "succeeded": "✓",
    "failed": "✗",
    "skipped": "-",
    "upstream_failed": "✗",
    "cancelled": "■",
    "pending": " ",
}


def parse_vars(pairs: Sequence[str], vars_file: str | None) -> dict[str, Any]:
    """``--vars-file`` then each ``--var K=V`` (V parsed as JSON when it parses)."""
    from flowq.definition import load_data
    from flowq.problems import json_problems

    values: dict[str, Any] = {}
    if vars_file:
        try:
            loaded = load_data(Path(vars_file).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise UsageError(f"--vars-file {vars_file}: {' '.join(str(exc).split())}") from exc
        if not isinstance(loaded, dict):
            raise UsageError(f"--vars-file {vars_file}: must hold a mapping of names to values")
        problems = json_problems(loaded, where=f"--vars-file {vars_file}: vars")
        if problems:
            raise ValidationError(problems)
        values.update(loaded)
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--var {pair!r}: expected KEY=VALUE")
        values[key.strip()] = json_or_text(raw)
    return values


def json_or_text(raw: str) -> Any:
    """``raw`` parsed as JSON if it is JSON (``NaN``, ``Infinity`` and numbers too large for a
    float are not), else ``raw`` itself."""
    from flowq.problems import json_problems

    def not_json(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        value = json.loads(raw, parse_constant=not_json)
    except ValueError:
        return raw
    return raw if json_problems(value) else value


def _print_json(doc: Any) -> None:
    print(json.dumps(doc, indent=2, default=str))


def _print_status(doc: dict[str, Any]) -> None:
    print(f"execution {doc['execution_id']}  {doc['workflow_id']}@{doc['version']}  {doc['state']}")
    if doc.get("error"):
        print(f"  error: {doc['error']}")
    width = max((len(k) for k in doc["tasks"]), default=4)
    for tid, task in doc["tasks"].items():
        line = f"  {STATE_MARK.get(task['state'], '?')} {tid:<{width}}  {task['state']:<15}"
        line += f" attempts={task['attempts']}"
        if task.get("error"):
            line += f"  {task['error']}"
        print(line)


# -- commands -------------------------------------------------------------------------------------
def cmd_validate(args: argparse.Namespace) -> int:
    from flowq.definition import validate_file

    code = EXIT_OK
    for path in args.files:
        problems = validate_file(path)
        if problems:
            code = EXIT_USAGE
            for problem in problems:
                print(problem, file=sys.stderr)
        else:
            print(f"{path}: ok")
    return code


def cmd_plan(args: argparse.Namespace) -> int:
    from flowq.compiler import compile_workflow
    from flowq.definition import Workflow

    plan = compile_workflow(Workflow.from_file(args.file))
    if args.json:
        _print_json(plan.to_dict())
    else:
        print(plan.render())
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from flowq.client import Client
    from flowq.definition import Workflow

    wf = Workflow.from_file(args.file)
    wf.check_connections(os.environ, source=args.file)
    values = parse_vars(args.var, args.vars_file)
    settings = replace(Settings.from_env(), broker_url=None, result_backend=None)
    with _stdout_for_json(args.json), Client(settings, concurrency=args.concurrency) as client:
        client.register(wf, replace=True)
        started = time.monotonic()
        eid = client.start(wf.id, values, version=wf.version, priority=args.priority)
        if not args.json:
            print(f"execution {eid} of {wf.id}@{wf.version} started")
        doc = _follow(client, eid, started, quiet=args.json)
    if args.json:
        _print_json(doc)
    else:
        _print_status(doc)
    return EXIT_OK if doc["state"] == S.COMPLETED else EXIT_FAILED


@contextmanager
def _stdout_for_json(active: bool) -> Iterator[None]:
    """With ``--json`` stdout holds only the document: what the in-process worker's handlers
    print goes to stderr meanwhile."""
    if not active:
        yield
        return
    with redirect_stdout(sys.stderr):
        yield


def _follow(client: Any, eid: str, started: float, quiet: bool) -> dict[str, Any]:
    """Print each task transition as it is recorded, until the execution ends.

    The state is read before the history: once it says ended, that history holds every
    transition up to the end (the end commits with the last task's), so none goes unprinted.
    """
    seen: set[int] = set()  # a change can commit after one with a larger id was read
    while True:
        doc: dict[str, Any] = client.status(eid)
        for event in client.history(eid):
            if event["id"] in seen:
                continue
            seen.add(event["id"])
            if quiet or event["task_id"] is None:
                continue
            mark = STATE_MARK.get(event["to"], "?")
            reason = (
                f"  ({event['reason']})" if event["to"] in ("retrying", "failed", "skipped") else ""
            )
            print(
                f"[{time.monotonic() - started:7.2f}s] {mark} {event['task_id']} "
                f"{event['to']}{reason}",
                flush=True,
            )
        if doc["state"] in S.EXECUTION_ENDED:
            return doc
        time.sleep(0.05)


def _client() -> Any:
    from flowq.client import Client

    # a person is waiting: a store that does not answer is said within seconds, not a minute
    return Client(Settings.from_env(), store_retry_seconds=STORE_RETRY_SECONDS)


def cmd_register(args: argparse.Namespace) -> int:
    from flowq.definition import Workflow

    workflows = [Workflow.from_file(path) for path in args.files]  # all valid, or none stored
    code = EXIT_OK
    with _client() as client:
        for path, wf in zip(args.files, workflows, strict=True):
            try:
                changed = client.register(wf, replace=args.replace)
            except Conflict as exc:  # this file only: the others are stored all the same
                print(f"{path}: {exc}", file=sys.stderr)
                code = EXIT_FAILED
                continue
            print(f"{path}: registered {wf.id}@{wf.version}" + ("" if changed else " (unchanged)"))
    return code


def cmd_start(args: argparse.Namespace) -> int:
    workflow_id, _, version_text = args.workflow.partition("@")
    version = None
    if version_text:
        if not version_text.isdigit():
            raise UsageError(f"{args.workflow}: version must be a number, as in {workflow_id}@2")
        version = int(version_text)
    values = parse_vars(args.var, args.vars_file)
    with _stdout_for_json(args.json), _client() as client:
        eid = client.start(
            workflow_id,
            values,
            version=version,
            priority=args.priority,
            idempotency_key=args.idempotency_key,
        )
        if args.wait:
            doc = client.wait(eid, timeout=args.timeout)
        else:
            if client.settings.embedded:
                # Nothing else would run it: the embedded worker lives in this process.
                client.wait(eid, timeout=args.timeout)
            doc = client.status(eid) if args.json else {}
    if not args.wait:
        _print_json(doc) if args.json else print(eid)
        return EXIT_OK
    if args.json:
        _print_json(doc)
    else:
        _print_status(doc)
    return EXIT_OK if doc["state"] == S.COMPLETED else EXIT_FAILED


def cmd_status(args: argparse.Namespace) -> int:
    with _client() as client:
        doc = client.status(args.id)
    _print_json(doc) if args.json else _print_status(doc)
    return EXIT_OK


def cmd_history(args: argparse.Namespace) -> int:
    with _client() as client:
        events = client.history(args.id)
    if args.json:
        _print_json(events)
        return EXIT_OK
    for e in events:
        who = e["task_id"] or "(execution)"
        print(f"{e['at']}  {who:<24} {e['from'] or '-':>15} -> {e['to']:<15} {e['reason'] or ''}")
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    with _client() as client:
        rows = client.list(state=args.state, workflow_id=args.workflow, limit=args.limit)
    if args.json:
        _print_json(rows)
        return EXIT_OK
    for r in rows:
        done = r["tasks_total"] - r["tasks_remaining"]
        print(
            f"{r['execution_id']}  {r['workflow_id']}@{r['version']}  {r['state']:<10} "
            f"{done}/{r['tasks_total']}  {r['created_at']}"
        )
    return EXIT_OK


def _control(action: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        with _stdout_for_json(args.json), _client() as client:
            doc = getattr(client, action)(args.id)
            if client.settings.embedded and doc["state"] == S.RUNNING:
                doc = client.wait(args.id)  # the embedded worker lives in this process
        _print_json(doc) if args.json else print(f"{args.id}: {doc['state']}")
        return EXIT_OK

    return run


# -- parser ---------------------------------------------------------------------------------------
def _add_vars(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--var",
        action="append",
        default=[],
        metavar="K=V",
        help="a variable; V is parsed as JSON when it parses",
    )
    p.add_argument("--vars-file", metavar="F", help="YAML or JSON file of variables")


def _whole(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number from ``low`` (to ``high``)."""
    bounds = f"from {low} to {high}" if high is not None else f"of at least {low}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be a whole number {bounds}, got {text!r}")
        return value

    return parse


_priority, _positive, _port = _whole(0, 9), _whole(1), _whole(0, 65535)  # port 0: any free one


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line on stderr (SPEC section 3), naming the command, exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _with_parents(parents: list[argparse.ArgumentParser]) -> type[argparse.ArgumentParser]:
    """An ArgumentParser class whose instances (each command's) take ``parents``' options."""

    class Parser(OneLineParser):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **{**kwargs, "parents": [*kwargs.get("parents", []), *parents]})

    return Parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `flowq` command."""
    parser = OneLineParser(prog="flowq", description="Workflows on Celery.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    # --debug after the command too (``flowq run --debug f.yaml``); absent, the first one stands
    late = argparse.ArgumentParser(add_help=False)
    late.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_with_parents([late])
    )

    p = sub.add_parser("validate", help="check definitions")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.set_defaults(fn=cmd_validate)

    p = sub.add_parser("plan", help="print the compiled Celery canvas")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_plan)

    p = sub.add_parser("run", help="run one execution to its end, embedded (no servers)")
    p.add_argument("file", metavar="FILE")
    _add_vars(p)
    p.add_argument("--json", action="store_true", help="print only the status document")
    p.add_argument("--priority", type=_priority, default=None)
    p.add_argument("-c", "--concurrency", type=_positive, default=8, help="tasks run at once")
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("register", help="store definitions")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument(
        "--replace",
        action="store_true",
        help="overwrite an id@version already stored with another body",
    )
    p.set_defaults(fn=cmd_register)

    p = sub.add_parser("start", help="start an execution of a registered workflow")
    p.add_argument("workflow", metavar="WORKFLOW[@VERSION]")
    _add_vars(p)
    p.add_argument("--priority", type=_priority, default=None)
    p.add_argument("--idempotency-key", default=None)
    p.add_argument("--wait", action="store_true", help="wait for the end and print the status")
    p.add_argument("--timeout", type=float, default=None, help="seconds to --wait at most")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_start)

    for name, fn, text in (
        ("status", cmd_status, "the status document"),
        ("history", cmd_history, "every state change"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("id", metavar="ID")
        p.add_argument("--json", action="store_true")
        p.set_defaults(fn=fn)

    p = sub.add_parser("list", help="executions, newest first")
    p.add_argument("--state", choices=S.EXECUTION_STATES)
    p.add_argument("--workflow")
    p.add_argument("--limit", type=_positive, default=50)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_list)

    for action in ("pause", "resume", "cancel", "retry"):
        p = sub.add_parser(action, help=f"{action} an execution")
        p.add_argument("id", metavar="ID")
        p.add_argument("--json", action="store_true")
        p.set_defaults(fn=_control(action))

    p = sub.add_parser("worker", help="a Celery worker for flowq tasks")
    p.add_argument("-c", "--concurrency", type=_positive, default=os.cpu_count() or 2)
    p.add_argument("-Q", "--queues", default="flowq", help="comma-separated queue names")
    p.add_argument("-n", "--hostname", default=None)
    p.add_argument("-P", "--pool", choices=POOLS, help="Celery pool (default prefork)")
    p.add_argument("-l", "--loglevel", default="INFO")
    p.set_defaults(fn=cmd_worker)

    p = sub.add_parser("api", help="the HTTP API (uvicorn)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_port, default=8000)
    p.set_defaults(fn=cmd_api)

    p = sub.add_parser("flower", help="Flower on the same broker")
    p.add_argument("--port", type=_port, default=5555)
    p.set_defaults(fn=cmd_flower)

    p = sub.add_parser("db", help="state store administration")
    db = p.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    up = db.add_parser("upgrade", help="create or migrate the state tables")
    up.set_defaults(fn=cmd_db)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run a command, map errors to one line and an exit code."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # handlers like `examples.orders:fn` resolve here
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.fn(args)
        return code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`flowq list | head -1`): nothing to say
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's flush at exit must not fail again
        return EXIT_FAILED
    except Exception as exc:
        if args.debug:
            raise
        code = _exit_code(exc)
        for line in _error_lines(exc):
            print(f"flowq: {line}" if code != EXIT_USAGE else line, file=sys.stderr)
        return code


def _exit_code(exc: BaseException) -> int:
    if isinstance(exc, UsageError | ValidationError):
        return EXIT_USAGE
    return EXIT_FAILED


def _error_lines(exc: BaseException) -> list[str]:
    if isinstance(exc, ValidationError):
        return exc.problems
    if isinstance(exc, InvalidTransition | NotFound | WaitTimeout | FlowqError):
        return [str(exc)]
    from flowq.store.store import store_problem

    problem = store_problem(exc)
    if problem is not None:
        return [problem]
    text = " ".join(str(exc).split())
    return [f"{type(exc).__name__}: {text}" if text else type(exc).__name__]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
