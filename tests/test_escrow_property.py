"""Stateful property test: random register / stake / post / route / reroute / submit / expire /
cancel / abort / withdraw / unstake / slash sequences, with audits drawn, challenges, committee
votes (committed, revealed, any way), resolutions, delayed credits, coordinator bonds (bond,
unbond, withdraw) and contested reroutes, on the real Anvil. After every step the contracts hold
exactly stakes, bonds, escrows, credits (withdrawable and pending), open audit budgets and
rewards, to the wei; no job pays out more than its escrow or is both paid and fully refunded."""

import os

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from shardnet.chain import Chain, dev_account
from shardnet.contract_errors import ContractRevert
from shardnet.errors import TransactionFailed
from shardnet.protocol import Hardware, JobStatus, Stage
from shardnet.scenario import ETHER, World

BLOCKS = 4
NODE_IDS = range(13, 17)
CLIENT_IDS = (17, 18)
PAY_EVENTS = ("StagePaid", "CoordinatorPaid")
TREASURY = 0  # the devnet admin


def dev_account_of(address: str):
    return next(a for a in map(dev_account, NODE_IDS) if a.address == address)


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
            self.ballots: dict[tuple[int, str], tuple[int, bytes]] = {}  # (audit, member) -> (vote, salt)
            self.first_audit = self.c.verifier.audit_count() + 1
            self.replaced: list[tuple[int, int, Stage]] = []  # (job, stage, the old route's stage)
            self.steps = 0

        def teardown(self):
            chain.w3.provider.make_request("evm_revert", [self.snapshot])
            Escrow.total_steps += self.steps

        def _try(self, fn, *args, **kwargs):
            self.steps += 1
            try:
                return fn(*args, **kwargs)
            except (ContractRevert, TransactionFailed):  # refused in simulation, or reverted when mined
                return None  # a refused step must leave the books as they were: the invariants check it

        def _record(self, receipt, job_id=None):
            for event in self.c.market.events_in(receipt) if receipt else []:
                jid = event.args.get("jobId", job_id)
                if jid in self.jobs:
                    j = self.jobs[jid]
                    if event.name in PAY_EVENTS:
                        j["paid"] += event.args["amount"]
                    elif event.name == "ResultSubmitted":  # the route's fees, the cut, the change
                        j["paid"] += sum(s.fee for s in j["stages"]) + event.args["coordinatorCut"]
                        j["refunded"] += event.args["refund"]
                    elif event.name == "JobRefunded":
                        j["refunded"] += event.args["amount"]
                    elif event.name == "AuditDrawn":  # the committee's pay leaves the client's reserve
                        j["refunded"] -= event.args["budget"]
                        j["verification"] += event.args["budget"]
                    elif event.name == "StageRevoked":  # a stage found wrong: its fee back to the client
                        back = event.args["fromNode"] + event.args["fromCoordinator"]
                        j["paid"] -= back
                        j["refunded"] += back

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

        @initialize()
        def network(self):
            """Every run starts from a network that can serve, so audits and votes are reached."""
            for i in NODE_IDS:
                self.register(i, 0)

        @rule(
            data=st.data(),
            c=st.sampled_from(CLIENT_IDS),
            a=st.sampled_from(NODE_IDS),
            audit=st.sampled_from([5_000, 10_000]),
        )
        def full_job(self, data, c, a, audit):
            """Post, route, submit, draw and (half the time) run the committee in one step:
            completed, audited jobs are what the verifier's rules need."""
            before = self.c.verifier.audit_count()
            self.post(c, 5, 600, audit)
            job = max(self.jobs)
            stages = [Stage(dev_account(a).address, 0, BLOCKS, 4 * 10**9)]
            if self.jobs[job]["stages"] is None and self._try(
                self.c.market.route_job, job, stages, account=self.world.coordinator
            ):
                self.jobs[job]["stages"] = stages
                receipts = self.world.receipts(job, stages, "QmOut")
                submit = self.c.market.submit_result
                coordinator = self.world.coordinator.address
                result = self._try(submit, job, coordinator, stages, "QmOut", receipts, account=dev_account(a))
                self._record(result, job)
                self.draw_audits(job)
                if self.c.verifier.audit_count() > before and data.draw(st.booleans()):
                    self.committee_round(data, audit=self.c.verifier.audit_count())

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

        @rule(
            c=st.sampled_from(CLIENT_IDS),
            fee=st.integers(1, 5),
            ttl=st.integers(60, 600),
            audit=st.sampled_from([0, 5_000, 10_000]),
        )
        def post(self, c, fee, ttl, audit):
            max_fee = fee * 10**13
            job = self._try(self.world.post, self.model, dev_account(c), max_fee, ttl, audit_bps=audit)
            if job:
                self.jobs[job] = {
                    "max_fee": max_fee,
                    "stages": None,
                    "paid": 0,
                    "refunded": 0,
                    "verification": 0,
                    "claimed": set(),
                }

        @precondition(lambda self: self.jobs)
        @rule(data=st.data(), split=st.booleans())
        def route(self, data, split):
            job = data.draw(st.sampled_from(sorted(self.jobs)))
            nodes = [dev_account(i).address for i in NODE_IDS]
            a, b = data.draw(st.sampled_from(nodes)), data.draw(st.sampled_from(nodes))
            stages = (
                [Stage(a, 0, 2, 2 * 10**9), Stage(b, 2, BLOCKS, 2 * 10**9)]
                if split
                else [Stage(a, 0, BLOCKS, 4 * 10**9)]
            )
            if self._try(self.c.market.route_job, job, stages, account=self.world.coordinator):
                self.jobs[job]["stages"] = stages

        @rule(data=st.data(), a=st.sampled_from(NODE_IDS))
        def reroute(self, data, a):
            """Reroute a routed job (one posted and routed now, when there is none) around one stage."""
            routed = [
                j for j, v in self.jobs.items() if v["stages"] and self.c.market.job(j).status == JobStatus.ROUTED
            ]
            if not routed:
                posted = set(self.jobs)
                self.post(CLIENT_IDS[0], 5, 600, 0)
                if not set(self.jobs) - posted:
                    return
                job = max(self.jobs)
                first, second = dev_account(a).address, dev_account(NODE_IDS[(a + 1) % len(NODE_IDS)]).address
                stages = [Stage(first, 0, 2, 2 * 10**9), Stage(second, 2, BLOCKS, 2 * 10**9)]
                if not self._try(self.c.market.route_job, job, stages, account=self.world.coordinator):
                    return
                self.jobs[job]["stages"] = stages
                routed = [job]
            job = data.draw(st.sampled_from(sorted(routed)))
            old = self.jobs[job]["stages"]
            k = data.draw(st.integers(0, len(old) - 1))
            other = data.draw(st.sampled_from([dev_account(i).address for i in NODE_IDS]))
            new = [*old[:k], old[k]._replace(node=other), *old[k + 1 :]]
            coordinator = self.world.coordinator
            if self._try(self.c.market.reroute_job, job, coordinator.address, old, new, account=coordinator):
                self.jobs[job]["stages"] = new
                self.replaced += [(job, i, s) for i, s in enumerate(old) if s.node not in {n.node for n in new}]
                if self.replaced and data.draw(st.booleans()):  # the replaced node, live, contests at once
                    self.contest(data, 0)

        @precondition(lambda self: self.replaced)
        @rule(data=st.data(), wait=st.sampled_from([0, 0, 700]))
        def contest(self, data, wait):
            job, k, stage = data.draw(st.sampled_from(self.replaced))
            if wait:
                self.world.advance(wait)
            receipt = self.world.receipts(job, [stage] * (k + 1), "QmOut")[k]
            if self._try(self.c.nodes.contest_replacement, job, k, stage, receipt, account=dev_account_of(stage.node)):
                Escrow.contested += 1

        @rule(amount=st.integers(1, 3), step=st.sampled_from(["bond", "unbond", "withdraw"]))
        def coordinator_bond(self, amount, step):
            coordinator = self.world.coordinator
            if step == "bond":
                self._try(self.c.nodes.bond_coordinator, amount * ETHER // 2, account=coordinator)
            elif step == "unbond":
                self._try(self.c.nodes.request_unbond, amount * ETHER // 2, account=coordinator)
            else:
                self._try(self.c.nodes.withdraw_unbonded, account=coordinator)

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

        def _completed(self):
            return sorted(j for j, v in self.jobs.items() if v["stages"] and v["paid"])

        @precondition(lambda self: self._completed())
        @rule(data=st.data())
        def draw_one(self, data):
            self.draw_audits(data.draw(st.sampled_from(self._completed())))

        def draw_audits(self, job_pick):
            job = job_pick
            coordinator = self.world.coordinator.address
            receipt = self._try(
                self.c.market.draw_audits,
                job,
                coordinator,
                self.jobs[job]["stages"],
                account=self.world.admin,
                gas=2_000_000,
            )
            self._record(receipt, job)

        @precondition(lambda self: self._completed())
        @rule(data=st.data(), who=st.sampled_from([*CLIENT_IDS, *NODE_IDS]), bond=st.integers(0, 3))
        def challenge(self, data, who, bond):
            job = data.draw(st.sampled_from(self._completed()))
            stages = self.jobs[job]["stages"]
            k = data.draw(st.integers(0, len(stages)))  # one past the last stage: refused
            coordinator = self.world.coordinator.address
            self._try(self.c.market.challenge, job, coordinator, stages, k, bond * 10**15, account=dev_account(who))

        def _audits(self):
            return range(self.first_audit, self.c.verifier.audit_count() + 1)

        @precondition(lambda self: len(self._audits()))
        @rule(data=st.data())
        def committee_round(self, data, audit=None):
            """A whole round of one audit: each member votes either way or stays away, then it resolves."""
            audit = audit or data.draw(st.sampled_from(list(self._audits())))
            members = self.c.verifier.members(audit)
            mine = {dev_account(i).address for i in NODE_IDS}
            choices = data.draw(st.lists(st.sampled_from([0, 1, 2]), min_size=len(members), max_size=len(members)))
            for member, vote in zip(members, choices, strict=True):
                if vote and member in mine:
                    salt = os.urandom(32)
                    commitment = self.c.verifier.commitment(audit, member, vote, salt)
                    if self._try(self.c.verifier.commit, audit, commitment, account=self.world.account_of(member)):
                        self.ballots[(audit, member)] = (vote, salt)
                        Escrow.votes += 1
            for member in members:
                if (audit, member) in self.ballots:
                    vote, salt = self.ballots[(audit, member)]
                    self._try(self.c.verifier.reveal, audit, vote, salt, account=self.world.account_of(member))
            self.resolve(audit, wait=40)

        @precondition(lambda self: len(self._audits()))
        @rule(data=st.data(), wrong=st.booleans())
        def commit(self, data, wrong):
            audit = data.draw(st.sampled_from(list(self._audits())))
            mine = [dev_account(i).address for i in NODE_IDS]
            members = [m for m in self.c.verifier.members(audit) if m in mine] or mine[:1]  # or a stranger
            member = data.draw(st.sampled_from(members))
            vote, salt = (2 if wrong else 1), os.urandom(32)
            commitment = self.c.verifier.commitment(audit, member, vote, salt)
            if self._try(self.c.verifier.commit, audit, commitment, account=self.world.account_of(member)):
                self.ballots[(audit, member)] = (vote, salt)
                Escrow.votes += 1

        @precondition(lambda self: self.ballots)
        @rule(data=st.data(), lie=st.booleans())
        def reveal(self, data, lie):
            audit, member = data.draw(st.sampled_from(sorted(self.ballots)))
            vote, salt = self.ballots[(audit, member)]
            vote = 3 - vote if lie else vote  # a reveal that differs from the commitment is refused
            self._try(self.c.verifier.reveal, audit, vote, salt, account=self.world.account_of(member))

        @precondition(lambda self: len(self._audits()))
        @rule(data=st.data(), wait=st.sampled_from([0, 0, 40]))
        def resolve_one(self, data, wait):
            self.resolve(data.draw(st.sampled_from(list(self._audits()))), wait)

        def resolve(self, audit_pick, wait):
            audit = audit_pick
            if wait:
                self.world.advance(wait)
            receipt = self._try(self.c.verifier.resolve, audit, account=self.world.admin)
            self._record(receipt)  # a stage found wrong: StageRevoked
            if receipt:
                Escrow.resolved += 1
                Escrow.upheld += self.c.verifier.audit(audit).upheld

        @rule(who=st.sampled_from([*NODE_IDS, *CLIENT_IDS, 1, TREASURY]), verifier=st.booleans())
        def withdraw(self, who, verifier):
            target = self.c.verifier if verifier else self.c.market
            self._try(target.withdraw, account=dev_account(who))

        @invariant()
        def books_balance_to_the_wei(self):
            w3 = chain.w3
            stakes = sum(
                n.stake + n.pending_unstake for n in map(self.c.nodes.node, [dev_account(i).address for i in NODE_IDS])
            )
            bond, unbonding, _ = self.c.nodes.coordinator_bond(self.world.coordinator.address)
            assert w3.eth.get_balance(self.c.nodes.address) == stakes + bond + unbonding
            escrows = sum(self.c.market.job(j).held for j in self.jobs)
            people = [dev_account(i).address for i in (*NODE_IDS, *CLIENT_IDS, 1, TREASURY)]
            credits = sum(self.c.market.credit(a) for a in people)
            assert w3.eth.get_balance(self.c.market.address) == escrows + credits
            audits = [self.c.verifier.audit(a) for a in self._audits()]
            budgets = sum(a.budget for a in audits if not a.resolved)
            rewards = sum(self.c.verifier.credit(a) for a in people)
            assert w3.eth.get_balance(self.c.verifier.address) == budgets + rewards

        @invariant()
        def no_job_paid_and_refunded(self):
            for job_id, j in self.jobs.items():
                job = self.c.market.job(job_id)
                assert j["paid"] + j["refunded"] + j["verification"] + job.held == j["max_fee"]
                if job.status == JobStatus.CANCELLED:
                    assert j["paid"] == 0 and j["refunded"] == j["max_fee"]
                if job.status == JobStatus.ABORTING:  # open to delivery claims: nothing paid out yet
                    assert j["paid"] == j["refunded"] == 0 and job.held == j["max_fee"]
                if job.status in (JobStatus.EXPIRED, JobStatus.ABORTED):  # the stages that proved delivery are paid
                    assert j["paid"] == sum(j["stages"][k].fee for k in j["claimed"]) if j["stages"] else j["paid"] == 0
                if job.status == JobStatus.COMPLETED:
                    assert j["paid"] >= 0 and job.held == 0

    Escrow.total_steps = Escrow.resolved = Escrow.votes = Escrow.upheld = Escrow.contested = 0
    return Escrow


def test_escrow_invariants_hold_over_random_steps(chain):
    machine = make_machine(chain)
    settings_ = settings(
        max_examples=10,
        stateful_step_count=30,
        deadline=None,
        derandomize=False,
        suppress_health_check=list(HealthCheck),
    )
    test_case = machine.TestCase
    test_case.settings = settings_
    test_case().runTest()
    print(
        f"stateful steps run: {machine.total_steps}, votes: {machine.votes}, "
        f"audits resolved: {machine.resolved} ({machine.upheld} found the stage wrong), "
        f"reroutes contested: {machine.contested}"
    )
    assert machine.total_steps >= 200
