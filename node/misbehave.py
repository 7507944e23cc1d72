"""Deliberate misbehaviour, for tests and benches of verification only: a node started with
`misbehave = "..."` on the devnet corrupts what it serves in one of these ways; or, on a
committee, votes against its own check (lie_vote), never reveals its vote (absent) or exits the
moment its vote is committed, as a crash would (exit_after_commit); or (abort_late) as stage 0
aborts a job once its work is done, when the last stage asks for its receipt (what a stage
colluding with the client would do for a free result); or (withhold) names its transcript in
the receipt it signs but never stores it, so no audit can check the stage. The agent refuses
the setting on any chain but the devnet's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from shardnet.chain import DEVNET_CHAIN_ID

if TYPE_CHECKING:  # torch only where a stage corrupts its output: `node status` and the like start without it
    import torch

__all__ = ["DEVNET_CHAIN_ID", "corrupt_activation"]
Misbehaviour = Literal[
    "",
    "garbage",
    "lazy",
    "perturb",
    "wrong_token",
    "lie_vote",
    "absent",
    "exit_after_commit",
    "abort_late",
    "withhold",
]
MODES: tuple[Misbehaviour, ...] = ("garbage", "lazy", "perturb", "wrong_token")  # what a stage serves
COMMITTEE_MODES: tuple[Misbehaviour, ...] = ("lie_vote", "absent", "exit_after_commit")  # how a committee member votes


def corrupt_activation(mode: Misbehaviour, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """What a misbehaving stage sends instead of `out` (its honest output for input `x`)."""
    import torch

    if mode == "garbage":  # random activations of the right shape and scale
        return torch.randn_like(out) * out.std()
    if mode == "lazy" and x.shape == out.shape:  # skip its blocks: pass the input on unchanged
        return x.to(out.dtype)
    if mode == "perturb":  # noise of about 1% of the activation norm
        noise = torch.randn_like(out)
        noisy: torch.Tensor = out + noise * (0.01 * out.norm() / noise.norm())
        return noisy
    return out


def corrupt_token(mode: Misbehaviour, token: int, vocab_size: int) -> int:
    """The token a misbehaving last stage returns instead of `token`."""
    return (token + 1) % vocab_size if mode == "wrong_token" else token
