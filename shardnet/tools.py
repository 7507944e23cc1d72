"""Where the project's bundled tools live: Node.js packages installed by `make bootstrap`."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from shardnet.errors import ToolMissing

PACKAGE_DIR = Path(__file__).resolve().parent
JS_DIR = PACKAGE_DIR / "js"
CONTRACTS_DIR = PACKAGE_DIR.parent / "contracts"
_FIX = "run 'make bootstrap' in the repository root"


_HANDED_OUT: set[int] = set()  # ports free_port gave this process


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now and that this process has not
    handed out before: a caller starts a process on it a moment later, and until that process
    binds it the OS may offer the same port again (two devnet nodes once got one port)."""
    import socket

    for _ in range(1000):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no free TCP port on 127.0.0.1 that this process has not handed out already")


def default_home() -> Path:
    """Where the devnet keeps its state and deployment file: $SHARDNET_HOME, else <repo>/.devnet."""
    env = os.environ.get("SHARDNET_HOME")
    return Path(env) if env else repo_root() / ".devnet"


def repo_root() -> Path:
    """The repository root: where package.json and node_modules live."""
    env = os.environ.get("SHARDNET_ROOT")
    root = Path(env) if env else PACKAGE_DIR.parent
    if not (root / "package.json").exists():
        raise ToolMissing(f"no package.json under {root}; set SHARDNET_ROOT to the shardnet checkout")
    return root


def node_modules() -> Path:
    path = repo_root() / "node_modules"
    if not path.is_dir():
        raise ToolMissing(f"node_modules is missing under {path.parent}; {_FIX}")
    return path


def node_binary() -> str:
    found = shutil.which("node")
    if not found:
        raise ToolMissing("Node.js ('node') is not on PATH; install Node.js >= 20")
    return found


def anvil_binary() -> str:
    path = node_modules() / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"
    if path.exists():
        return str(path)
    found = shutil.which("anvil")
    if found:
        return found
    raise ToolMissing(f"anvil is not installed; {_FIX}")


def hardhat_binary() -> str:
    path = node_modules() / ".bin" / "hardhat"
    if not path.exists():
        raise ToolMissing(f"hardhat is not installed; {_FIX}")
    return str(path)


def solc_binary() -> str:
    """A native `solc` on PATH when present, else the solc-js shim (same standard-JSON interface)."""
    native = shutil.which("solc")
    if native and not os.environ.get("SHARDNET_FORCE_SOLCJS"):
        return native
    node_modules()  # fail early with the bootstrap hint
    if not (node_modules() / "solc" / "soljson.js").exists():
        raise ToolMissing(f"npm package 'solc' is not installed; {_FIX}")
    shim = JS_DIR / "solc-shim.mjs"
    shim.chmod(0o755)
    return str(shim)


def ipfs_daemon_script() -> Path:
    if not (node_modules() / "ipfs-daemon").is_dir():
        raise ToolMissing(f"npm package 'ipfs-daemon' is not installed; {_FIX}")
    return JS_DIR / "ipfs-daemon.mjs"
