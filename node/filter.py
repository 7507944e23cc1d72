"""Filter: which chain events concern this node, and what it should do about each.

A pure function over the event and the node's view (the ledger, already updated with the
event, and the jobs it is running), so it is tested without a chain.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass

from shardnet.events import Event
from shardnet.ledger import Ledger
from shardnet.protocol import JobStatus, Route, Span

SETTLED = ("ResultSubmitted", "JobExpired", "JobAborted", "JobCancelled")


def my_stage(address: str, route: Route) -> int | None:
    """This node's stage index on a route, or None."""
    for index, stage in enumerate(route):
        if stage.node == address:
            return index
    return None


@dataclass(frozen=True)
class LoadSpan:
    model_id: int
    span: Span


@dataclass(frozen=True)
class UnloadSpan:
    model_id: int


@dataclass(frozen=True)
class StartJob:
    """This node is stage 0 of a newly routed job: read the input and run the first span."""

    job_id: int


@dataclass(frozen=True)
class PrefetchInput:
    """A job was posted: a node that may become its stage 0 reads its input now, while the job
    is routed, so the read is off the job's critical path."""

    job_id: int


@dataclass(frozen=True)
class AdoptRoute:
    """A job this node is running was rerouted while it stays on the route."""

    job_id: int


@dataclass(frozen=True)
class DropJob:
    """Forget a job: it settled, or the node is no longer on its route."""

    job_id: int


@dataclass(frozen=True)
class ContestReroute:
    """A reroute took this node off a job it was running and recorded it failed: being live, it
    contests that with its receipt (before the job is dropped)."""

    job_id: int


@dataclass(frozen=True)
class ClaimAborted:
    """A job this node worked on was aborted while routed: claim its delivery, then forget it."""

    job_id: int


@dataclass(frozen=True)
class OpenAudits:
    """A job completed: open its audits if its result was drawn (every node checks)."""

    job_id: int
    result_block: int


@dataclass(frozen=True)
class ServeOnCommittee:
    """This node was drawn onto an audit's committee."""

    audit_id: int


Action = (
    LoadSpan
    | UnloadSpan
    | PrefetchInput
    | StartJob
    | AdoptRoute
    | ContestReroute
    | DropJob
    | ClaimAborted
    | OpenAudits
    | ServeOnCommittee
)


def actions_for(address: str, event: Event, ledger: Ledger, running: Container[int]) -> list[Action]:
    a = event.args
    if event.name == "ShardAssigned" and a["node"] == address:
        return [LoadSpan(a["modelId"], Span(a["start"], a["end"]))]
    if event.name == "ShardReleased" and a["node"] == address:
        return [UnloadSpan(a["modelId"])]
    if event.name == "JobPosted":
        return [PrefetchInput(a["jobId"])]
    if event.name in ("JobRouted", "JobRerouted"):
        job_id = a["jobId"]
        stage = my_stage(address, ledger.jobs[job_id].route)
        if stage is None:
            if event.name == "JobRerouted" and job_id in running and address in a["failedNodes"]:
                return [ContestReroute(job_id), DropJob(job_id)]
            return [DropJob(job_id)]
        if event.name == "JobRerouted" and job_id in running:
            return [AdoptRoute(job_id)]
        if event.name == "JobRouted" and stage == 0:
            return [StartJob(job_id)]
        return []
    if event.name == "ResultSubmitted":
        return [DropJob(a["jobId"]), OpenAudits(a["jobId"], event.block_number)]
    if event.name == "JobAborted" and a["jobId"] in running and ledger.jobs[a["jobId"]].status == JobStatus.ABORTING:
        return [ClaimAborted(a["jobId"])]
    if event.name in SETTLED:
        return [DropJob(a["jobId"])]
    if event.name == "AuditOpened" and address in a["members"]:
        return [ServeOnCommittee(a["auditId"])]
    return []
