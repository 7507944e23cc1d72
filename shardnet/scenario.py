"""Scripted on-chain flows over dev accounts: used by the demo, the benchmarks and the tests.

Account plan on the devnet mnemonic: #0 admin/treasury, #1 coordinator, #2.. nodes, then clients.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

from eth_account.signers.local import LocalAccount
from eth_utils.crypto import keccak
from web3.types import RPCEndpoint

from shardnet.bindings import Contracts
from shardnet.chain import Chain, dev_account
from shardnet.protocol import Hardware, Receipt, Stage
from shardnet.receipts import output_hash_of

ETHER = 10**18
GWEI = 10**9
COORDINATOR = 1
FIRST_NODE = 2


@dataclass
class World:
    chain: Chain
    contracts: Contracts
    admin: LocalAccount = field(default_factory=lambda: dev_account(0))
    coordinator: LocalAccount = field(default_factory=lambda: dev_account(COORDINATOR))

    @classmethod
    def of(cls, chain: Chain) -> World:
        return cls(chain, Contracts(chain))

    def node(self, i: int) -> LocalAccount:
        return dev_account(FIRST_NODE + i)

    def register_nodes(self, count: int, stake: int = ETHER) -> list[LocalAccount]:
        nodes = [self.node(i) for i in range(count)]
        for i, acct in enumerate(nodes):
            if not self.contracts.nodes.node(acct.address).registered_at:
                self.contracts.nodes.register(
                    f"http://127.0.0.1:{7001 + i}",
                    Hardware(4096 * (i + 1), 10 + i, 100),
                    acct.address.encode(),
                    stake,
                    account=acct,
                )
        return nodes

    def register_model(self, blocks: int, price_per_block: int = GWEI, name: str = "demo-model") -> int:
        cids = [f"Qm{f'block{b:03d}':>44}" for b in range(blocks)]
        return self.contracts.models.register_model(
            name, "QmManifest", blocks, keccak(text=",".join(cids)), price_per_block, account=self.admin
        )

    def assign_even(self, model_id: int, nodes: list[LocalAccount], blocks: int) -> list[tuple[int, int]]:
        """Consecutive spans, one per node, confirmed by each node."""
        spans = []
        for i, acct in enumerate(nodes):
            start, end = blocks * i // len(nodes), blocks * (i + 1) // len(nodes)
            self.contracts.models.assign_shard(model_id, acct.address, start, end, account=self.coordinator)
            self.contracts.models.confirm_shard(model_id, account=acct)
            spans.append((start, end))
        return spans

    def post(
        self,
        model_id: int,
        client: LocalAccount,
        max_fee: int,
        ttl_s: int = 3600,
        input_cid: str = "QmInput",
        audit_bps: int = 0,
    ) -> int:
        deadline = self.chain.w3.eth.get_block("latest")["timestamp"] + ttl_s
        return self.contracts.market.post_job(
            model_id, input_cid, b'{"kind":"forward"}', max_fee, deadline, account=client, audit_bps=audit_bps
        )

    def stages(self, nodes: list[LocalAccount], spans: list[tuple[int, int]], fee_per_block: int) -> list[Stage]:
        return [Stage(a.address, s, e, fee_per_block * (e - s)) for a, (s, e) in zip(nodes, spans, strict=True)]

    def receipts(
        self,
        job_id: int,
        stages: list[Stage],
        output_cid: str,
        signers: list[LocalAccount] | None = None,
        coordinator: str | None = None,
    ) -> list[Receipt]:
        """Valid chained receipts for a route `coordinator` (default: the world's) recorded:
        stage k's input hash is stage k-1's output hash."""
        coordinator = coordinator or self.coordinator.address
        signers = signers or [self.account_of(s.node) for s in stages]
        hashes = [keccak(text=f"job{job_id}-activations-{k}") for k in range(len(stages))] + [
            output_hash_of(output_cid)
        ]
        return [
            self.contracts.market.receipts.sign(signers[k], job_id, k, s, coordinator, hashes[k], hashes[k + 1])
            for k, s in enumerate(stages)
        ]

    def account_of(self, address: str) -> LocalAccount:
        return _dev_accounts_by_address()[address]

    def advance(self, seconds: int) -> None:
        self.chain.w3.provider.make_request(RPCEndpoint("evm_increaseTime"), [seconds])
        self.chain.w3.provider.make_request(RPCEndpoint("evm_mine"), [])


@cache
def _dev_accounts_by_address() -> dict[str, LocalAccount]:
    return {acct.address: acct for acct in map(dev_account, range(20))}
