"""Chain access: HTTP and websocket connections, deployment loading, locally signed
transactions (simulated first, so a revert is a named exception before any gas is spent),
and contract custom errors decoded into named Python exceptions."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import AsyncIterator
from functools import cache
from typing import Any, NoReturn

import requests
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils.crypto import keccak
from hexbytes import HexBytes
from web3 import AsyncWeb3, Web3
from web3._utils.method_formatters import receipt_formatter
from web3.contract import Contract
from web3.contract.contract import ContractFunction
from web3.exceptions import ContractLogicError, TransactionNotFound
from web3.providers import WebSocketProvider
from web3.types import BlockIdentifier, RPCEndpoint, TxParams, Wei

from shardnet import compiler
from shardnet.contract_errors import ContractRevert, decode_revert
from shardnet.deployment import Deployment
from shardnet.errors import ChainUnavailable, DeploymentNotFound, TransactionFailed

# Anvil's and Hardhat's default mnemonic accounts ("test test ... junk"): devnet only.
DEV_MNEMONIC = "test test test test test test test test test test test junk"
Account.enable_unaudited_hdwallet_features()
RECEIPT_POLL_S, RECEIPT_POLL_MAX_S = 0.001, 0.1  # waiting for a transaction to be mined
FEES_TTL_S = 2.0  # how long fee fields read from the chain are reused (transactions with a gas bound)


@cache
def dev_account(index: int) -> LocalAccount:
    """Funded account #index of the devnet mnemonic (0 = admin, 1 = coordinator, ...)."""
    account: LocalAccount = Account.from_mnemonic(DEV_MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}")
    return account


# what a JSON-RPC call raises when the chain does not answer (down, restarting, unreachable)
UNREACHABLE = (requests.exceptions.RequestException, OSError)


def _unreachable(url: str, reason: object) -> ChainUnavailable:
    return ChainUnavailable(
        f"cannot reach the JSON-RPC endpoint at {url} ({reason}); "
        "start the devnet with 'shardnet devnet up' or pass the right --rpc-url"
    )


DEVNET_CHAIN_ID = 31337  # the embedded devnet's chain (Anvil's default): test-only settings need it


class Chain:
    """A synchronous HTTP connection plus the project contracts and a signing account."""

    def __init__(
        self,
        rpc_url: str,
        account: LocalAccount | None = None,
        deployment: Deployment | None = None,
        timeout: float = 10.0,
    ):
        self.rpc_url = rpc_url
        # eth_chainId asked once, then cached: web3's validation asks it before every eth_call and
        # estimate otherwise (two extra round trips per contract read, measured: 9.1 -> 3 ms a read)
        self._http = Web3.HTTPProvider(
            rpc_url,
            request_kwargs={"timeout": timeout},
            cache_allowed_requests=True,
            cacheable_requests={RPCEndpoint("eth_chainId")},
        )
        self.w3 = Web3(self._http)
        self.account = account
        self.deployment = deployment
        self._abi_cache: list[dict[str, Any]] | None = None
        self._nonce_lock = threading.Lock()
        self._ahead = float("-inf")  # the furthest the chain's clock was seen ahead of this machine's
        self._fees: tuple[float, dict[str, Wei]] | None = None  # (when read, EIP-1559 fee fields)
        self._sync_send = True  # until the chain says it lacks eth_sendRawTransactionSync
        self._batches = True  # until the chain refuses a JSON-RPC batch
        try:
            self.chain_id = self.w3.eth.chain_id
        except UNREACHABLE as exc:
            raise _unreachable(rpc_url, type(exc).__name__) from None

    @classmethod
    def from_deployment(
        cls, deployment: Deployment | None = None, account: LocalAccount | None = None, rpc_url: str | None = None
    ) -> Chain:
        deployment = deployment or Deployment.load()
        chain = cls(rpc_url or deployment.rpc_url, account, deployment)
        if chain.chain_id != deployment.chain_id:
            raise DeploymentNotFound(
                f"the deployment file is for chain {deployment.chain_id} but {chain.rpc_url} is chain "
                f"{chain.chain_id}; point --rpc-url at the right chain or redeploy with 'shardnet devnet up'"
            )
        return chain

    # ------------------------------------------------------------------ contracts
    @property
    def abis(self) -> list[dict[str, Any]]:
        if self._abi_cache is None:
            self._abi_cache = compiler.all_abis()
        return self._abi_cache

    # ------------------------------------------------------------------ the chain's clock
    def clock(self) -> tuple[int, float]:
        """The latest block's timestamp, and the chain's time now as well as it can be told: a
        chain that mines on demand keeps its latest timestamp while idle, and a devnet's clock can
        be moved ahead of this machine's, so the estimate is this machine's clock plus the furthest
        ahead of it the chain was seen (the next block is stamped at least that)."""
        stamp = int(self.w3.eth.get_block("latest")["timestamp"])
        wall = time.time()
        self._ahead = max(self._ahead, stamp - wall)
        return stamp, max(float(stamp), wall + self._ahead)

    def past(self, deadline: int, slack_s: float = 2.0) -> bool:
        """Whether the chain's clock has passed `deadline`: a block says so, or the estimate is
        past it by `slack_s` (so a transaction sent now lands in a block stamped after it)."""
        stamp, now = self.clock()
        return stamp > deadline or now > deadline + slack_s

    def contract(self, name: str, address: str | None = None) -> Contract:
        if address is None:
            if self.deployment is None:
                raise DeploymentNotFound("no deployment loaded; pass --deployment or run 'shardnet devnet up'")
            address = self.deployment.address(name)
        return self.w3.eth.contract(address=Web3.to_checksum_address(address), abi=compiler.load_artifact(name).abi)

    def has_code(self, address: str) -> bool:
        return len(self.w3.eth.get_code(Web3.to_checksum_address(address))) > 0

    # ------------------------------------------------------------------ calls and transactions
    def decode_error(self, exc: ContractLogicError) -> ContractRevert:
        data = exc.data if isinstance(exc.data, str) else ""
        if data and data != "0x":
            return decode_revert(data, self.abis)
        return ContractRevert({"message": str(exc)})

    def call(self, fn: ContractFunction, block: BlockIdentifier = "latest") -> Any:
        try:
            return fn.call(block_identifier=block)
        except ContractLogicError as exc:
            raise self.decode_error(exc) from None

    def transact(
        self,
        fn: ContractFunction,
        value: int = 0,
        account: LocalAccount | None = None,
        gas: int | None = None,
        gas_limit: int | None = None,
    ) -> dict[str, Any]:
        """Simulate, sign, send and wait for `fn`. Reverts raise the contract's named error.
        By default the gas is estimated (the node runs the call several times to find it). With
        `gas_limit`, a bound known to hold, the call is simulated once (eth_call) and sent with
        that limit (only the gas used is paid): quicker on a job's critical path. With `gas`, it
        is sent as is, unsimulated."""
        account = account or self.account
        if account is None:
            raise TransactionFailed("no signing account configured; pass --key or set it in the config")
        if gas_limit:
            return self._transact_bounded(fn, value, account, gas_limit)
        with self._nonce_lock:
            params: TxParams = {
                "from": account.address,
                "value": Wei(value),
                "nonce": self.w3.eth.get_transaction_count(account.address, "pending"),
                "chainId": self.chain_id,
            }
            if gas:
                params["gas"] = gas
            try:
                tx: Any = fn.build_transaction(params)  # estimates gas: a revert surfaces here
            except ContractLogicError as exc:
                raise self.decode_error(exc) from None
            if not gas:  # estimates can fall short (state moves, nested calls' 63/64 rule): add headroom
                tx["gas"] = int(tx["gas"] * 1.25) + 20_000
            return self._send(tx, account)

    def _transact_bounded(
        self, fn: ContractFunction, value: int, account: LocalAccount, gas_limit: int
    ) -> dict[str, Any]:
        with self._nonce_lock:
            return self.send_raw(self.sign_bounded(fn, account, gas_limit, value))

    def sign_bounded(self, fn: ContractFunction, account: LocalAccount, gas_limit: int, value: int = 0) -> bytes:
        """`fn` simulated once (eth_call: a revert raises the contract's named error) and signed
        with a known gas bound, the pending nonce and fee fields cached for FEES_TTL_S: no gas
        estimate, no fee lookups, and the simulation and the nonce read asked in one JSON-RPC
        batch, sent as they are (web3's request formatting costs more than a devnet's answer on
        a job's critical path). Send it with `send_raw` before signing another for the same
        account."""
        data = fn._encode_transaction_data()  # web3's own encoder (pinned < 9), once
        call = {"from": account.address, "to": fn.address, "data": data, "value": hex(value)}
        simulated, counted = self._rpc_batch(
            [("eth_call", [call, "latest"]), ("eth_getTransactionCount", [account.address, "pending"])]
        )
        if "error" in simulated:
            self._refuse_simulated(simulated["error"])
        if "error" in counted:
            raise TransactionFailed(f"the chain could not say the nonce of {account.address}: {counted['error']}")
        tx = {"from": account.address, "to": fn.address, "data": data, "value": value, "gas": gas_limit}
        tx |= {"nonce": int(counted["result"], 16), "chainId": self.chain_id, **self.fee_fields()}
        return bytes(account.sign_transaction(tx).raw_transaction)

    def _rpc(self, method: str, params: list[Any]) -> Any:
        """One JSON-RPC request straight to the chain; an error answer raises `_RpcError`."""
        response = self.w3.provider.make_request(RPCEndpoint(method), params)
        if "error" in response:
            raise _RpcError(dict(response["error"]))
        return response["result"]

    def _rpc_batch(self, calls: list[tuple[str, list[Any]]]) -> list[dict[str, Any]]:
        """Several JSON-RPC requests in one round trip; their answers (each a result or an error)
        in order. A chain that refuses batches is asked one at a time (and not batched again)."""
        if self._batches:
            try:
                answers = self._http.make_batch_request([(RPCEndpoint(m), p) for m, p in calls])
            except requests.exceptions.HTTPError:
                answers = []
            if isinstance(answers, list) and len(answers) == len(calls):
                return [dict(a) for a in answers]
            self._batches = False
        return [dict(self.w3.provider.make_request(RPCEndpoint(m), p)) for m, p in calls]

    def _refuse_simulated(self, error: dict[str, Any]) -> NoReturn:
        """Raise what a failed simulation means: the contract's named error where it gave one."""
        data = error.get("data")
        if isinstance(data, dict):  # some chains nest the revert data one level down
            data = data.get("data")
        message = str(error.get("message", error))
        if isinstance(data, str) and data not in ("", "0x"):
            raise decode_revert(data, self.abis)
        if "revert" in message:
            raise ContractRevert({"message": message})
        raise TransactionFailed(f"the chain refused to simulate the call: {message}")

    def fee_fields(self) -> dict[str, Wei]:
        """maxFeePerGas (twice the base fee plus the tip: room for several full blocks' rises) and
        maxPriorityFeePerGas, re-read every FEES_TTL_S; a chain without a base fee gets gasPrice."""
        now = time.monotonic()
        if self._fees is None or now - self._fees[0] > FEES_TTL_S:
            base = self.w3.eth.get_block("latest").get("baseFeePerGas")
            if base is None:
                fields = {"gasPrice": self.w3.eth.gas_price}
            else:
                tip = self.w3.eth.max_priority_fee
                fields = {"maxFeePerGas": Wei(2 * base + tip), "maxPriorityFeePerGas": tip}
            self._fees = now, fields
        return self._fees[1]

    def deploy(self, artifact: compiler.Artifact, *args: Any, account: LocalAccount | None = None) -> tuple[str, int]:
        """Deploy `artifact`; returns (address, block number)."""
        account = account or self.account
        if account is None:
            raise TransactionFailed("no signing account configured to deploy with; pass --key")
        factory = self.w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
        with self._nonce_lock:
            tx: Any = factory.constructor(*args).build_transaction(
                {
                    "from": account.address,
                    "chainId": self.chain_id,
                    "nonce": self.w3.eth.get_transaction_count(account.address, "pending"),
                }
            )
            receipt = self._send(tx, account)
        return receipt["contractAddress"], receipt["blockNumber"]

    def wait_for_receipt(self, tx_hash: Any, timeout_s: float = 60.0) -> Any:
        """A sent transaction's receipt, looked for 1 ms after it was sent and then backing off
        to 100 ms: a devnet mines in about a millisecond (web3's fixed poll interval added far
        more to every transaction on a job's critical path), a public chain in seconds."""
        deadline, delay = time.monotonic() + timeout_s, RECEIPT_POLL_S
        while True:
            time.sleep(delay)
            try:
                receipt = self.w3.eth.get_transaction_receipt(tx_hash)
                if receipt is not None:
                    return receipt
            except TransactionNotFound:
                pass
            if time.monotonic() > deadline:
                raise TransactionFailed(
                    f"transaction {HexBytes(tx_hash).to_0x_hex()} was not mined within {timeout_s:.0f} s; "
                    "is the chain mining?"
                )
            delay = min(delay * 2, RECEIPT_POLL_MAX_S)

    def _send(self, tx: dict[str, Any], account: LocalAccount) -> dict[str, Any]:
        return self.send_raw(bytes(account.sign_transaction(tx).raw_transaction))

    def send_raw(self, raw: bytes) -> dict[str, Any]:
        """Send a signed transaction and wait for it to be mined; a revert raises, as does a
        transaction the chain refuses (naming why)."""
        tx_hash = HexBytes(keccak(raw))
        receipt = self._send_sync(raw, tx_hash) if self._sync_send else None
        if receipt is None:
            try:
                self._rpc("eth_sendRawTransaction", ["0x" + raw.hex()])
            except _RpcError as exc:
                raise self._refused(tx_hash, exc) from None
            receipt = self.wait_for_receipt(tx_hash)
        if receipt["status"] != 1:
            raise TransactionFailed(f"transaction {tx_hash.hex()} reverted on-chain (gas used {receipt['gasUsed']})")
        return dict(receipt)

    def _send_sync(self, raw: bytes, tx_hash: HexBytes) -> Any | None:
        """Send `raw` with eth_sendRawTransactionSync (EIP-7966: the chain answers with the
        receipt once mined; Anvil has it), one round trip where polling for the receipt took two
        or more. None where the chain lacks the method (not asked again: send it as usual). A
        transaction the chain took but did not mine within its own wait (the EIP's errors 4 and 5)
        is waited for as a plainly sent one is."""
        try:
            answer = self._rpc("eth_sendRawTransactionSync", ["0x" + raw.hex()])
        except _RpcError as exc:
            message = str(exc.error.get("message", "")).lower()
            lacks = any(w in message for w in ("not found", "not supported", "does not exist", "not available"))
            if exc.error.get("code") in (-32601, -32004) or ("method" in message and lacks):
                self._sync_send = False
                return None
            if exc.error.get("code") in (4, 5):  # in the pool, not mined within the chain's wait: as before
                return self.wait_for_receipt(tx_hash)
            raise self._refused(tx_hash, exc) from None
        except requests.exceptions.Timeout:  # the chain's wait outlasted this connection's
            return self.wait_for_receipt(tx_hash)
        return receipt_formatter(answer)  # web3's own, as get_transaction_receipt gives it (pinned < 9)

    @staticmethod
    def _refused(tx_hash: HexBytes, exc: _RpcError) -> TransactionFailed:
        message = exc.error.get("message", exc.error)
        return TransactionFailed(f"the chain refused transaction {tx_hash.to_0x_hex()}: {message}")


class _RpcError(Exception):
    def __init__(self, error: dict[str, Any]):
        super().__init__(str(error))
        self.error = error


@contextlib.asynccontextmanager
async def connect_ws(ws_url: str) -> AsyncIterator[AsyncWeb3[WebSocketProvider]]:
    """An AsyncWeb3 over a websocket (for event subscriptions). One subscription style per connection."""
    try:
        w3 = await AsyncWeb3(WebSocketProvider(ws_url))
    except OSError as exc:
        raise _unreachable(ws_url, type(exc).__name__) from None
    try:
        yield w3
    finally:
        await w3.provider.disconnect()
