"""Stateful property test: random register / stake / post / route / submit / expire / cancel /
abort / withdraw / unstake / slash sequences on the real Anvil; after every step the contracts hold
exactly stakes + escrows + unwithdrawn credits, to the wei, and no job pays out more than its
escrow or is both paid and fully refunded."""

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from shardnet.chain import Chain, dev_account
from shardnet.contract_errors import ContractRevert
from shardnet.protocol import Hardware, JobStatus, Stage
from shardnet.scenario import ETHER, World

BLOCKS = 4
NODE_IDS = range(13, 17)
CLIENT_IDS = (17, 18)
PAY_EVENTS = ("StagePaid", "CoordinatorPaid")


def make_machine(chain: Chain):
    class Escrow(RuleBasedStateMachine):
        def __init__(self):
            super().__init__()
            self.snapshot = chain.w3.provider.make_request("evm_snapshot", [])["result"]
            self.world = World.of(chain)
            self.c = self.world.contracts
            self.model = self.world.register_model(BLOCKS, price_per_block=10**9)
            self.c.nodes.grant_slasher(self.world.admin.address, account=self.world.admin)
            self.jobs: dict[int, dict] = {}
            self.steps = 0

        def teardown(self):
            chain.w3.provider.make_request("evm_revert", [self.snapshot])
            Escrow.total_steps += self.steps

        def _try(self, fn, *args, **kwargs):
            self.steps += 1
            try:
                return fn(*args, **kwargs)
            except ContractRevert:
                return None  # a refused step must leave the books as they were: the invariants check it

        def _record(self, receipt, job_id=None):
            for event in self.c.market.events_in(receipt) if receipt else []:
                jid = event.args.get("jobId", job_id)
                if jid in self.jobs:
                    if event.name in PAY_EVENTS:
                        self.jobs[jid]["paid"] += event.args["amount"]
                    elif event.name == "JobRefunded":
                        self.jobs[jid]["refunded"] += event.args["amount"]

        @rule(i=st.sampled_from(NODE_IDS), extra=st.integers(0, 2))
        def register(self, i, extra):
            acct = dev_account(i)
            if self._try(
                self.c.nodes.register, "http://n", Hardware(1024, 10, 10), b"", ETHER + extra * ETHER, account=acct
            ):
                self._try(
                    self.c.models.assign_shard, self.model, acct.address, 0, BLOCKS, account=self.world.coordinator
                )
                self._try(self.c.models.confirm_shard, self.model, account=acct)

        @rule(i=st.sampled_from(NODE_IDS), amount=st.integers(1, 3))
        def add_stake(self, i, amount):
            self._try(self.c.nodes.add_stake, amount * ETHER // 2, account=dev_account(i))

        @rule(i=st.sampled_from(NODE_IDS), amount=st.integers(1, 4))
        def request_unstake(self, i, amount):
            self._try(self.c.nodes.request_unstake, amount * ETHER // 2, account=dev_account(i))

        @rule(i=st.sampled_from(NODE_IDS))
        def withdraw_unstaked(self, i):
            self._try(self.c.nodes.withdraw_unstaked, account=dev_account(i))

        @rule(i=st.sampled_from(NODE_IDS), amount=st.integers(1, 3))
        def slash(self, i, amount):
            self._try(self.c.nodes.slash, dev_account(i).address, amount * ETHER // 4, "test", account=self.world.admin)

        @rule(c=st.sampled_from(CLIENT_IDS), fee=st.integers(1, 5), ttl=st.integers(60, 600))
        def post(self, c, fee, ttl):
            max_fee = fee * 10**13
            job = self._try(self.world.post, self.model, dev_account(c), max_fee, ttl)
            if job:
                self.jobs[job] = {"max_fee": max_fee, "stages": None, "paid": 0, "refunded": 0, "claimed": set()}

        @precondition(lambda self: self.jobs)
        @rule(data=st.data(), split=st.booleans())
        def route(self, data, split):
            job = data.draw(st.sampled_from(sorted(self.jobs)))
            nodes = [dev_account(i).address for i in NODE_IDS]
            a, b = data.draw(st.sampled_from(nodes)), data.draw(st.sampled_from(nodes))
            stages = (
                [Stage(a, 0, 2, 3 * 10**12), Stage(b, 2, BLOCKS, 3 * 10**12)]
                if split
                else [Stage(a, 0, BLOCKS, 5 * 10**12)]
            )
            if self._try(self.c.market.route_job, job, stages, account=self.world.coordinator):
                self.jobs[job]["stages"] = stages

        @precondition(lambda self: any(j["stages"] for j in self.jobs.values()))
        @rule(data=st.data())
        def submit(self, data):
            job = data.draw(st.sampled_from(sorted(j for j, v in self.jobs.items() if v["stages"])))
            stages = self.jobs[job]["stages"]
            receipts = self.world.receipts(job, stages, "QmOut")
            self._record(
                self._try(
                    self.c.market.submit_result,
                    job,
                    self.world.coordinator.address,
                    stages,
                    "QmOut",
                    receipts,
                    account=dev_account(CLIENT_IDS[0]),
                ),
                job,
            )

        @precondition(lambda self: any(j["stages"] for j in self.jobs.values()))
        @rule(data=st.data())
        def claim(self, data):
            job = data.draw(st.sampled_from(sorted(j for j, v in self.jobs.items() if v["stages"])))
            stages = self.jobs[job]["stages"]
            k = data.draw(st.integers(0, len(stages) - 1))
            receipt = self.world.receipts(job, stages, "QmOut")[k]
            coordinator = self.world.coordinator.address
            if self._try(self.c.market.claim_delivery, job, coordinator, stages, k, receipt, account=self.world.admin):
                self.jobs[job]["claimed"].add(k)

        @precondition(lambda self: self.jobs)
        @rule(data=st.data(), wait=st.integers(0, 700))
        def expire(self, data, wait):
            job = data.draw(st.sampled_from(sorted(self.jobs)))
            if wait:
                self.world.advance(wait)
            stages = self.jobs[job]["stages"] or []
            self._record(
                self._try(
                    self.c.market.expire_job, job, self.world.coordinator.address, stages, account=self.world.admin
                ),
                job,
            )

        @precondition(lambda self: self.jobs)
        @rule(data=st.data(), c=st.sampled_from(CLIENT_IDS))
        def cancel(self, data, c):
            job = data.draw(st.sampled_from(sorted(self.jobs)))
            self._record(self._try(self.c.market.cancel_job, job, account=dev_account(c)), job)

        @precondition(lambda self: self.jobs)
        @rule(data=st.data())
        def abort(self, data):
            job = data.draw(st.sampled_from(sorted(self.jobs)))
            stages = self.jobs[job]["stages"] or []
            caller = self.world.coordinator
            self._record(
                self._try(self.c.market.abort_job, job, self.world.coordinator.address, stages, "test", account=caller),
                job,
            )

        @rule(who=st.sampled_from([*NODE_IDS, *CLIENT_IDS, 1]))
        def withdraw(self, who):
            self._try(self.c.market.withdraw, account=dev_account(who))

        @invariant()
        def books_balance_to_the_wei(self):
            w3 = chain.w3
            stakes = sum(
                n.stake + n.pending_unstake for n in map(self.c.nodes.node, [dev_account(i).address for i in NODE_IDS])
            )
            assert w3.eth.get_balance(self.c.nodes.address) == stakes + self.c.nodes.slashed_balance()
            escrows = sum(self.c.market.job(j).escrow for j in self.jobs)
            people = [dev_account(i).address for i in (*NODE_IDS, *CLIENT_IDS, 1)]
            credits = sum(self.c.market.credit(a) for a in people)
            assert w3.eth.get_balance(self.c.market.address) == escrows + credits

        @invariant()
        def no_job_paid_and_refunded(self):
            for job_id, j in self.jobs.items():
                job = self.c.market.job(job_id)
                assert j["paid"] + j["refunded"] + job.escrow == j["max_fee"]
                if job.status in (JobStatus.CANCELLED, JobStatus.ABORTED):
                    assert j["paid"] == 0 and j["refunded"] == j["max_fee"]
                if job.status == JobStatus.EXPIRED:  # the stages that proved delivery are paid, no more
                    assert j["paid"] == sum(j["stages"][k].fee for k in j["claimed"]) if j["stages"] else j["paid"] == 0
                if job.status == JobStatus.COMPLETED:
                    assert j["paid"] > 0 and job.escrow == 0

    Escrow.total_steps = 0
    return Escrow


def test_escrow_invariants_hold_over_random_steps(chain):
    machine = make_machine(chain)
    settings_ = settings(
        max_examples=10,
        stateful_step_count=25,
        deadline=None,
        derandomize=False,
        suppress_health_check=list(HealthCheck),
    )
    test_case = machine.TestCase
    test_case.settings = settings_
    test_case().runTest()
    print(f"stateful steps run: {machine.total_steps}")
    assert machine.total_steps >= 200
