"""A job's state at one stage (`JobRun`) and the span it runs on (`LoadedSpan`): its KV-cache
session, every message that entered and left the stage (its transcript) and their running
hashes, which the stage signs as its receipt."""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass, field
from typing import Any

import torch

from shardnet.jobs import JobParams
from shardnet.model.manifest import Manifest
from shardnet.model.span import Session, SpanModel
from shardnet.protocol import Receipt, Span, Stage
from shardnet.receipts import ZERO_HASH, fold


@dataclass
class LoadedSpan:
    model_id: int
    manifest: Manifest
    span: Span
    model: SpanModel
    tokenizer: Any | None = None  # a transformers tokenizer, at the ends of the model
    processor: Any | None = None  # an image model's own image processor, at block 0

    @functools.cached_property
    def eos_ids(self) -> frozenset[int]:
        """The tokens that end a generation (the model config's eos_token_id: one, a list or none)."""
        eos = self.manifest.config.eos_token_id
        return frozenset(e for e in (eos if isinstance(eos, list) else [eos]) if isinstance(e, int))


@dataclass
class JobRun:
    job_id: int
    model_id: int
    stage: int
    stages: list[Stage]
    coordinator: str
    params: JobParams
    session: Session
    loaded: LoadedSpan  # the span this job runs on, kept even if the node is reassigned
    step: int = 0
    tokens: list[int] = field(default_factory=list)  # generate: tokens produced so far (last stage)
    prompt_len: int = 0
    generator: torch.Generator | None = None
    attention_mask: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # stage 0's first step: token_type_ids
    timing: dict[str, Any] = field(default_factory=dict)  # picked_up_at, t0, done (unix s), carried stage to stage
    computed: tuple[float, float] = (0.0, 0.0)  # the last model call on this job here: began, ended (unix s)
    # the hops between stages so far on the job's way to this stage, and their total ms (carried
    # in the link frames' headers, outside the messages the receipts hash: node.pipeline.count_hop)
    hops: tuple[int, float] = (0, 0.0)
    sent_log: list[bytes] = field(default_factory=list)  # every message sent to the next stage (replay, transcript)
    received_log: list[bytes] = field(default_factory=list)  # every message that entered the stage (transcript)
    expected_step: int = 0  # next activation step this stage has not processed yet
    stalled: bool = False  # the next stage is unreachable: waiting for the coordinator to reroute
    replaying: bool = False  # sending sent_log to a new next stage: new messages wait their turn in it
    final_receipt: Receipt | None = None  # last stage: its own receipt for the output, once made
    # last stage: the earlier stages' receipts and transcript CIDs, asked for as its final step
    # began, with the route they were asked of
    early_receipts: tuple[list[Stage], asyncio.Future[list[tuple[Receipt, str]]]] | None = None
    progress: asyncio.Event = field(default_factory=asyncio.Event)  # last stage: set on each new token
    ended: bool = False  # last stage: no token will follow (the output is made, or the job is over)
    # the CID of the transcript last named (and put on IPFS), by the (received, sent) counts it covers
    transcript: tuple[tuple[int, int], str] | None = None

    # the hash chains folded so far: (messages folded, hash); the rest is folded when asked for
    _in_folded: tuple[int, bytes] = (0, ZERO_HASH)
    _out_folded: tuple[int, bytes] = (0, ZERO_HASH)

    def receive(self, body: bytes) -> None:
        """A message entered the stage: it joins the transcript (and so the input hash chain)."""
        self.received_log.append(body)

    def emit(self, body: bytes) -> None:
        """An activation message left for the next stage: transcript and output hash chain."""
        self.sent_log.append(body)

    @property
    def in_hash(self) -> bytes:
        """The running hash over every message received, in order (what the receipt signs).
        Folded when asked for, not per message: a decode step's path stays short."""
        self._in_folded = _fold_on(self._in_folded, self.received_log)
        return self._in_folded[1]

    @property
    def out_hash(self) -> bytes:
        """The running hash over every message sent to the next stage, in order."""
        self._out_folded = _fold_on(self._out_folded, self.sent_log)
        return self._out_folded[1]

    @property
    def all_sent(self) -> bool:
        """This (not last) stage has sent every message the job can need of it: one for a
        forward or embed job, one per step of a generation run to max_new_tokens."""
        return len(self.sent_log) >= (self.params.max_new_tokens if self.params.kind == "generate" else 1)

    @property
    def last_step(self) -> bool:
        """Whether the step this stage runs next is the job's last here: a forward's or an embed
        job's one pass, or the step of a generation that makes (last stage) or carries (earlier
        stages) its max_new_tokens-th token (an end-of-sequence token may end it sooner, unforeseen)."""
        if self.params.kind != "generate":
            return True
        done = len(self.tokens) if self.is_last else len(self.sent_log)
        return done + 1 >= self.params.max_new_tokens

    @property
    def is_first(self) -> bool:
        return self.stage == 0

    @property
    def is_last(self) -> bool:
        return self.stage == len(self.stages) - 1


def _fold_on(folded: tuple[int, bytes], log: list[bytes]) -> tuple[int, bytes]:
    """`folded` (the first n messages of `log` and their hash) carried to the whole log."""
    n, running = folded
    for body in log[n:]:
        running = fold(running, body)
    return len(log), running
