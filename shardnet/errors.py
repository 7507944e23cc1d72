"""One exception root for the whole project. Every message says what to do next."""

from __future__ import annotations


class ShardnetError(Exception):
    """Root of every error shardnet raises on purpose."""


class ConfigError(ShardnetError):
    """A setting or input is wrong; the message names the field and the fix."""


class ToolMissing(ShardnetError):
    """A bundled tool (node, anvil, solc-js, the IPFS daemon) is not installed."""


class CompileError(ShardnetError):
    """The Solidity sources did not compile."""


class DevnetError(ShardnetError):
    """The local devnet could not be started, queried or stopped."""


class PortInUse(DevnetError):
    pass


class ChainUnavailable(ShardnetError):
    """The JSON-RPC endpoint did not answer."""


class DeploymentNotFound(ShardnetError):
    """No deployment file, or its contracts are not on the chain."""


class TransactionFailed(ShardnetError):
    """A transaction was mined but reverted, or could not be sent."""


class StorageError(ShardnetError):
    """IPFS add / cat / pin failed."""


class StorageUnavailable(StorageError):
    """The IPFS RPC API did not answer."""


class ContentMismatch(StorageError):
    """Bytes read back do not hash to the CID that was asked for."""


class ContentNotFound(StorageError):
    """The daemon could not produce the CID within the timeout."""


class ShardVerificationError(StorageError):
    """A fetched block or manifest does not match what the manifest / CID promised."""


class JobInputError(ShardnetError):
    """The job's params or input cannot be served as given; the message names the field and the fix."""


class ModelError(ShardnetError, ValueError):
    """A model, block, span or compression setting does not fit; the message says which and why."""


class BlockLoadError(ModelError):
    """A span's blocks could not be loaded into the model (missing or mismatched tensors)."""


class PeerError(ShardnetError):
    """Another node refused or did not answer a data-plane request."""


class JobTimeout(ShardnetError):
    """A job did not settle within the time the caller waits for it."""


class StreamMismatch(ShardnetError):
    """The tokens a last stage streamed differ from the output it submitted on-chain."""


class IndexerError(ShardnetError):
    """The index could not be opened or brought up to date; the message names the fix."""
