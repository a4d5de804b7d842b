"""Executions: start one, list them, read the status and history, and steer them."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Query, Request, Response

from flowq.api.routes import ClientDep, check_json, errors, invalid_json
from flowq.api.routes.workflows import WorkflowId
from flowq.api.schemas import (
    EXECUTION_ID_PATTERN,
    WORKFLOW_ID_PATTERN,
    ExecutionPage,
    ExecutionState,
    ExecutionSummary,
    HistoryEvent,
    StartRequest,
    StatusDocument,
)
from flowq.client import Client
from flowq.errors import NotFound, ValidationError
from flowq.status import history_list

router = APIRouter(tags=["executions"])

ExecutionId = Annotated[
    str,
    Path(max_length=64, pattern=EXECUTION_ID_PATTERN, description="an execution id"),
]
REPLAYED = "Idempotent-Replayed"

ACTIONS = ("pause", "resume", "cancel", "retry")
LINKS = {
    "GetExecution": "getExecution",
    "GetHistory": "getExecutionHistory",
    **{action.capitalize(): f"{action}Execution" for action in ACTIONS},
}
EXAMPLE_START = {"vars": {"order_id": 42, "sku": "WIDGET-1", "quantity": 2}, "priority": 5}


@router.post(
    "/workflows/{workflow_id}/executions",
    status_code=201,
    response_model=StatusDocument,
    responses={
        201: {
            "description": "the execution started, or the one an earlier start with the same "
            f"idempotency_key made (then the `{REPLAYED}: true` header is set)",
            "headers": {
                "Location": {"schema": {"type": "string"}, "description": "the execution"},
                REPLAYED: {
                    "schema": {"type": "string", "enum": ["true"]},
                    "description": "present when an idempotent start found an execution",
                },
            },
            "links": {
                name: {
                    "operationId": operation,
                    "parameters": {"execution_id": "$response.body#/execution_id"},
                }
                for name, operation in LINKS.items()
            },
        },
        **errors(404, 413, 422),
    },
    operation_id="startExecution",
    summary="Start an execution",
)
def start_execution(
    client: ClientDep,
    response: Response,
    workflow_id: WorkflowId,
    request: Annotated[
        StartRequest | None,
        Body(openapi_examples={"order": {"summary": "an order", "value": EXAMPLE_START}}),
    ] = None,
) -> dict[str, Any]:
    """Start the workflow (its newest version unless ``version``): 201 and the status document.

    A repeated ``idempotency_key`` for the same workflow starts nothing and answers 201 with
    the first execution, so a client may retry a start whose answer it lost.
    """
    body = request or StartRequest()
    check_json(body.vars, "body.vars")
    started = client.launch(
        workflow_id,
        body.vars,
        priority=body.priority,
        idempotency_key=body.idempotency_key,
        version=body.version,
    )
    eid = started.execution_id
    response.headers["Location"] = f"/executions/{eid}"
    if not started.created:
        response.headers[REPLAYED] = "true"
    return client.status(eid)


@router.get(
    "/executions",
    response_model=ExecutionPage,
    responses=errors(422),
    operation_id="listExecutions",
    summary="List executions, newest first",
)
def list_executions(
    client: ClientDep,
    state: Annotated[ExecutionState | None, Query(description="only in this state")] = None,
    workflow_id: Annotated[
        str | None,
        Query(max_length=200, pattern=WORKFLOW_ID_PATTERN, description="only of this workflow"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500, description="executions per page")] = 50,
    cursor: Annotated[
        str | None,
        Query(
            max_length=64,
            pattern=EXECUTION_ID_PATTERN,
            description="`next` of the previous page: list what is older than that execution",
        ),
    ] = None,
) -> ExecutionPage:
    """A page of executions; ``next`` is null on the last page."""
    try:
        rows = client.list(state=state, workflow_id=workflow_id, limit=limit + 1, before=cursor)
    except NotFound:
        raise ValidationError(
            f"query.cursor: no execution {cursor}; pass the `next` of the previous page"
        ) from None
    more = len(rows) > limit
    items = [ExecutionSummary(**r) for r in rows[:limit]]
    return ExecutionPage(items=items, next=items[-1].execution_id if more else None)


@router.get(
    "/executions/{execution_id}",
    response_model=StatusDocument,
    responses=errors(404, 422),
    operation_id="getExecution",
    summary="The status document",
)
def get_execution(client: ClientDep, execution_id: ExecutionId) -> dict[str, Any]:
    """The status document of SPEC section 2."""
    return client.status(execution_id)


@router.get(
    "/executions/{execution_id}/history",
    response_model=list[HistoryEvent],
    responses=errors(404, 422),
    operation_id="getExecutionHistory",
    summary="Every state change, in the order recorded",
)
def get_history(
    client: ClientDep,
    execution_id: ExecutionId,
    after: Annotated[
        int, Query(ge=0, le=2**62, description="only events with a larger `id` (to follow)")
    ] = 0,
) -> list[dict[str, Any]]:
    """The history of the execution and its tasks: ``at``, ``task_id``, ``from``, ``to``..."""
    return client.store.read(lambda tx: history_list(tx, execution_id, after))


def _control(action: str, text: str) -> Callable[[Client, str], dict[str, Any]]:
    def control(client: ClientDep, execution_id: ExecutionId) -> dict[str, Any]:
        doc: dict[str, Any] = getattr(client, action)(execution_id)
        return doc

    control.__name__ = f"{action}_execution"
    control.__doc__ = f"{text} 409, naming the current state, if the state machine forbids it."
    return control


async def _no_body_or_json(request: Request) -> None:
    """The control actions take no body; one sent all the same must still be JSON (SPEC
    section 5: malformed JSON anywhere is a 4xx), said as a bad body of another route is."""
    body = await request.body()
    if not body.strip():
        return
    try:
        value = json.loads(body)
    except (ValueError, RecursionError) as exc:  # not JSON, not UTF-8, nested too deeply
        raise ValidationError(invalid_json(exc)) from exc
    check_json(value, "body")  # NaN, Infinity and deep nesting, as elsewhere


for _action, _text in (
    ("pause", "Pause: no task starts after this; running tasks finish."),
    ("resume", "Resume a paused execution where it stopped."),
    ("cancel", "Cancel: running tasks are revoked, nothing more starts."),
    ("retry", "Retry a failed execution: failed and never-run tasks run again."),
):
    router.add_api_route(
        f"/executions/{{execution_id}}/{_action}",
        _control(_action, _text),
        methods=["POST"],
        response_model=StatusDocument,
        responses=errors(404, 409, 422),
        operation_id=f"{_action}Execution",
        dependencies=[Depends(_no_body_or_json)],
        summary=f"{_action.capitalize()} an execution",
    )
