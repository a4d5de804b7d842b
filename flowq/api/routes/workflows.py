"""Definitions: register one, list them, read one version with its compiled plan."""

from __future__ import annotations

from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Body, Path, Query, Response

from flowq.api.routes import ClientDep, check_json, errors
from flowq.api.schemas import (
    MAX_VERSION,
    WORKFLOW_ID_PATTERN,
    Registered,
    WorkflowDetail,
    WorkflowPage,
    WorkflowSummary,
)
from flowq.compiler import compile_workflow
from flowq.definition import Workflow
from flowq.errors import ValidationError
from flowq.store import Tx, iso
from flowq.store import tables as t

router = APIRouter(tags=["workflows"])

WorkflowId = Annotated[
    str,
    Path(
        max_length=200,
        pattern=WORKFLOW_ID_PATTERN,
        description="a workflow id",
        examples=["order_processing"],
    ),
]

EXAMPLE_DEFINITION: dict[str, Any] = {
    "id": "order_processing",
    "name": "Order processing",
    "version": 1,
    "inputs": {
        "type": "object",
        "required": ["order_id", "sku", "quantity"],
        "properties": {
            "order_id": {"type": "integer"},
            "sku": {"type": "string", "minLength": 1},
            "quantity": {"type": "integer", "minimum": 1},
        },
    },
    "defaults": {"retries": 2, "retry_backoff": 0.1},
    "tasks": [
        {"id": "validate_order", "type": "python", "handler": "examples.orders:validate_order"},
        {
            "id": "charge_payment",
            "type": "python",
            "depends_on": ["validate_order"],
            "handler": "examples.orders:charge_payment",
        },
    ],
}


@router.post(
    "/workflows",
    status_code=201,
    response_model=Registered,
    responses={
        201: {
            "description": "stored (or stored already with the same body)",
            "headers": {"Location": {"schema": {"type": "string"}}},
            "links": {
                "GetWorkflow": {
                    "operationId": "getWorkflow",
                    "parameters": {
                        "workflow_id": "$response.body#/id",
                        "version": "$response.body#/version",
                    },
                },
            },
        },
        **errors(409, 413, 422),
    },
    operation_id="registerWorkflow",
    summary="Register a definition",
)
def register_workflow(
    client: ClientDep,
    response: Response,
    definition: Annotated[
        dict[str, Any],
        Body(
            description="a workflow definition (SPEC section 1) as JSON",
            openapi_examples={"order": {"summary": "two tasks", "value": EXAMPLE_DEFINITION}},
        ),
    ],
    replace: Annotated[
        bool, Query(description="overwrite an id@version stored with another body")
    ] = False,
) -> Registered:
    """Store a definition: 201 (also when the same body is stored already), 409 if that
    id@version holds another body, 422 with one line per problem if it is invalid."""
    check_json(definition, "body")
    wf = Workflow.from_dict(definition, source="body")
    if wf.version > MAX_VERSION:
        raise ValidationError(f"body: version: must be at most {MAX_VERSION} (got {wf.version})")
    client.register(wf, replace=replace)
    response.headers["Location"] = f"/workflows/{wf.id}?version={wf.version}"
    return Registered(id=wf.id, version=wf.version)


@router.get(
    "/workflows",
    response_model=WorkflowPage,
    responses=errors(422),
    operation_id="listWorkflows",
    summary="List workflows, by id",
)
def list_workflows(
    client: ClientDep,
    limit: Annotated[int, Query(ge=1, le=500, description="workflows per page")] = 100,
    cursor: Annotated[
        str | None,
        Query(max_length=200, pattern=WORKFLOW_ID_PATTERN, description="`next` of the last page"),
    ] = None,
) -> WorkflowPage:
    """Every registered workflow id with its newest version, paginated by id."""
    return client.store.read(lambda tx: _workflow_page(tx, limit, cursor))


@router.get(
    "/workflows/{workflow_id}",
    response_model=WorkflowDetail,
    responses=errors(404, 422),
    operation_id="getWorkflow",
    summary="Read a definition",
)
def get_workflow(
    client: ClientDep,
    workflow_id: WorkflowId,
    version: Annotated[
        int | None, Query(ge=1, le=MAX_VERSION, description="the newest when absent")
    ] = None,
) -> WorkflowDetail:
    """One version of a definition (the newest unless ``version``), with its Celery plan."""
    wf = client.definition(workflow_id, version)
    versions = client.store.read(lambda tx: _versions(tx, [workflow_id]))[workflow_id]
    return WorkflowDetail(
        id=wf.id,
        version=wf.version,
        name=wf.name,
        digest=wf.digest(),
        versions=[v for v, _ in versions],
        definition=wf.to_dict(),
        plan=compile_workflow(wf).to_dict(),
    )


def _versions(tx: Tx, ids: list[str]) -> dict[str, list[tuple[int, sa.Row[Any]]]]:
    d = t.definitions.c
    found: dict[str, list[tuple[int, sa.Row[Any]]]] = {i: [] for i in ids}
    rows = tx.conn.execute(
        sa.select(t.definitions).where(d.workflow_id.in_(ids)).order_by(d.workflow_id, d.version)
    )
    for row in rows:
        found[row.workflow_id].append((int(row.version), row))
    return found


def _workflow_page(tx: Tx, limit: int, cursor: str | None) -> WorkflowPage:
    d = t.definitions.c
    q = sa.select(d.workflow_id).distinct().order_by(d.workflow_id).limit(limit + 1)
    if cursor is not None:
        q = q.where(d.workflow_id > cursor)
    ids = list(tx.conn.execute(q).scalars())
    more = len(ids) > limit
    ids = ids[:limit]
    items = []
    for ident, versions in _versions(tx, ids).items():
        newest = versions[-1][1]
        items.append(
            WorkflowSummary(
                id=ident,
                name=newest.name,
                version=newest.version,
                versions=[v for v, _ in versions],
                updated_at=iso(max(r.updated_at for _, r in versions)) or "",
            )
        )
    return WorkflowPage(items=items, next=ids[-1] if more else None)
