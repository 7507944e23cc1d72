"""Chain module on the real Anvil: named custom errors, event follower, websocket."""

import asyncio
import time

import pytest

from shardnet import contract_errors
from shardnet.chain import Chain, connect_ws, dev_account
from shardnet.errors import ChainUnavailable, DeploymentNotFound
from shardnet.events import EventReader
from tests.conftest import free_port

PROFILE = (2048, 10, 100)


def test_custom_error_becomes_named_exception(fresh_chain):
    nodes = fresh_chain.contract("NodeRegistry")
    with pytest.raises(contract_errors.InsufficientStake) as info:
        fresh_chain.transact(nodes.functions.register("http://n", PROFILE, b""), value=5, account=dev_account(6))
    assert info.value.error_args == {"node": dev_account(6).address, "have": 5, "need": 10**18}
    assert "minimum stake" in str(info.value)
    assert isinstance(info.value, contract_errors.ContractRevert)


def test_unreachable_rpc_is_one_clear_error():
    with pytest.raises(ChainUnavailable, match="shardnet devnet up"):
        Chain(f"http://127.0.0.1:{free_port()}", timeout=1)


def test_deployment_for_another_chain_is_refused(deployment):
    from dataclasses import replace

    with pytest.raises(DeploymentNotFound, match="chain 1"):
        Chain.from_deployment(replace(deployment, chain_id=1))


def test_follower_resumes_from_saved_height(fresh_chain, tmp_path):
    nodes = fresh_chain.contract("NodeRegistry")
    state = tmp_path / "height.json"
    start = fresh_chain.w3.eth.block_number + 1

    def register(i):
        fresh_chain.transact(
            nodes.functions.register(f"http://n{i}", PROFILE, b""), value=10**18, account=dev_account(10 + i)
        )

    register(0)
    register(1)
    follower = EventReader(fresh_chain, [nodes.address], state, start_block=start)
    first = [e for e in follower.poll() if e.name == "NodeRegistered"]
    assert [e.args["endpoint"] for e in first] == ["http://n0", "http://n1"]

    register(2)
    # a new process, same state file: only what it has not seen
    restarted = EventReader(fresh_chain, [nodes.address], state, start_block=start)
    second = [e for e in restarted.poll() if e.name == "NodeRegistered"]
    assert [e.args["endpoint"] for e in second] == ["http://n2"]
    assert list(restarted.poll()) == []


def test_websocket_subscription_delivers_logs(fresh_chain, deployment):
    nodes = fresh_chain.contract("NodeRegistry")

    async def scenario():
        async with connect_ws(deployment.ws_url) as w3:
            assert await w3.eth.chain_id == 31337
            await w3.eth.subscribe("logs", {"address": nodes.address})
            loop = asyncio.get_running_loop()
            loop.run_in_executor(
                None,
                lambda: fresh_chain.transact(
                    nodes.functions.register("http://ws", PROFILE, b""), value=10**18, account=dev_account(15)
                ),
            )
            async for message in w3.socket.process_subscriptions():
                return message["result"]

    log = asyncio.run(asyncio.wait_for(scenario(), 20))
    assert log["address"].lower() == nodes.address.lower()


def test_the_chain_clock_runs_on_while_an_on_demand_chain_is_idle(fresh_chain):
    """Anvil mines only on demand, so its latest timestamp stands still while idle, and a devnet's
    clock can be moved ahead of this machine's: `Chain.past` (committee and claim deadlines) must
    still see a deadline pass, which the latest block alone would not until someone mines."""
    chain = Chain(fresh_chain.rpc_url)  # its own clock estimate, away from the session's
    provider = chain.w3.provider
    provider.make_request("evm_increaseTime", [600])
    provider.make_request("evm_mine", [])
    for _ in range(4):  # the session chain is shared: a block another process mines meanwhile starts over
        stamp, now = chain.clock()
        assert now >= stamp >= time.time() + 590  # the chain runs ten minutes ahead
        assert not chain.past(stamp + 1, slack_s=1.0)
        time.sleep(2.5)
        if chain.clock()[0] == stamp:  # no block since: the latest timestamp stood still
            break
    else:
        pytest.fail("the shared chain never stayed idle for 2.5 s")
    assert chain.past(stamp + 1, slack_s=1.0)  # yet the next block is stamped past the deadline
    provider.make_request("evm_mine", [])
    assert chain.clock()[0] > stamp + 1


def _transfer(chain: Chain, sender, nonce: int | None = None) -> bytes:
    tx = {
        "to": dev_account(7).address,
        "value": 1,
        "gas": 21000,
        "nonce": chain.w3.eth.get_transaction_count(sender.address, "pending") if nonce is None else nonce,
        "chainId": chain.chain_id,
        **chain.fee_fields(),
    }
    return bytes(sender.sign_transaction(tx).raw_transaction)


def _recording(chain: Chain, answers: dict | None = None) -> list[str]:
    """The RPC methods `chain` sends from now on; `answers` replaces the chain's answer to some."""
    methods, ask = [], chain.w3.provider.make_request

    def make_request(method, params):
        methods.append(method)
        if answers and method in answers:
            return {"jsonrpc": "2.0", "id": 0, **answers[method]}
        return ask(method, params)

    chain.w3.provider.make_request = make_request
    return methods


def test_a_transaction_and_its_receipt_take_one_round_trip(fresh_chain, deployment):
    """Anvil answers eth_sendRawTransactionSync (EIP-7966) with the receipt: no receipt polling,
    and the receipt reads as web3's own; a refused or reverted transaction still raises."""
    from shardnet.errors import TransactionFailed

    chain, sender = Chain.from_deployment(deployment), dev_account(6)
    raw = _transfer(chain, sender)
    methods = _recording(chain)
    receipt = chain.send_raw(raw)
    assert methods == ["eth_sendRawTransactionSync"]
    assert receipt == dict(fresh_chain.w3.eth.get_transaction_receipt(receipt["transactionHash"]))
    assert receipt["status"] == 1 and isinstance(receipt["blockNumber"], int)

    with pytest.raises(TransactionFailed, match="refused transaction .*nonce"):
        chain.send_raw(raw)  # its nonce is spent
    nodes = chain.contract("NodeRegistry")
    fn = nodes.functions.register("http://n", PROFILE, b"")
    tx = fn.build_transaction({"from": sender.address, "value": 5, "gas": 300_000, "chainId": chain.chain_id})
    tx["nonce"] = chain.w3.eth.get_transaction_count(sender.address, "pending")
    with pytest.raises(TransactionFailed, match="reverted on-chain"):
        chain.send_raw(bytes(sender.sign_transaction(tx).raw_transaction))  # sent unsimulated: mined, reverted


def test_a_chain_without_the_one_round_trip_send_is_polled_for_receipts(fresh_chain, deployment):
    """A chain that lacks eth_sendRawTransactionSync is asked once; its transactions are sent and
    their receipts polled for, as before."""
    chain, sender = Chain.from_deployment(deployment), dev_account(6)
    lacking = {"error": {"code": -32601, "message": "the method eth_sendRawTransactionSync does not exist"}}
    methods = _recording(chain, {"eth_sendRawTransactionSync": lacking})
    first = chain.send_raw(_transfer(chain, sender))
    second = chain.send_raw(_transfer(chain, sender))
    assert first["status"] == second["status"] == 1 and second["blockNumber"] > first["blockNumber"]
    sends = [m for m in methods if m.startswith("eth_sendRawTransaction")]
    assert sends == ["eth_sendRawTransactionSync", "eth_sendRawTransaction", "eth_sendRawTransaction"]


def test_a_bounded_transaction_asks_its_simulation_and_nonce_in_one_batch(fresh_chain, deployment):
    """A transaction with a known gas bound (every one on a job's critical path) asks for its
    simulation and its nonce in one JSON-RPC batch; a revert in the batch is still the contract's
    named error, and a chain that refuses batches is asked one request at a time."""
    chain, sender = Chain.from_deployment(deployment), dev_account(6)
    batches, batch = [], chain._http.make_batch_request

    def recorded(calls):
        batches.append([method for method, _ in calls])
        return batch(calls)

    chain._http.make_batch_request = recorded
    methods = _recording(chain)
    register = chain.contract("NodeRegistry").functions.register("http://n", PROFILE, b"")
    with pytest.raises(contract_errors.InsufficientStake):
        chain.transact(register, value=5, account=sender, gas_limit=500_000)
    assert batches == [["eth_call", "eth_getTransactionCount"]] and methods == []
    receipt = chain.transact(register, value=10**18, account=sender, gas_limit=500_000)
    assert receipt["status"] == 1 and len(batches) == 2 and methods == ["eth_sendRawTransactionSync"]

    other = Chain.from_deployment(deployment)
    other._http.make_batch_request = lambda calls: {"jsonrpc": "2.0", "id": None, "error": {"code": -32600}}
    with pytest.raises(contract_errors.InsufficientStake):
        other.transact(register, value=5, account=dev_account(8), gas_limit=500_000)
    unbatched = _recording(other)
    unregistered = other.contract("NodeRegistry").functions.register("http://m", PROFILE, b"")
    assert other.transact(unregistered, value=10**18, account=dev_account(8), gas_limit=500_000)["status"] == 1
    assert unbatched[:2] == ["eth_call", "eth_getTransactionCount"]
