"""Where a command's signing key comes from, never the command line itself: an encrypted
keystore file (`--keystore`, the Web3 Secret Storage format geth and eth-account write; its
password from SHARDNET_KEYSTORE_PASSWORD or asked for), else the SHARDNET_KEY environment
variable (a 0x private key), else a funded devnet account (`--dev-account`)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def key_options(default_dev_account: int) -> Callable[[F], F]:
    def decorate(f: F) -> F:
        f = click.option(
            "--dev-account",
            type=int,
            default=default_dev_account,
            show_default=True,
            help="devnet account that signs, when no --keystore or SHARDNET_KEY is given",
        )(f)
        f = click.option(
            "--keystore",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="encrypted key file (password from SHARDNET_KEYSTORE_PASSWORD, or asked for)",
        )(f)
        return f

    return decorate


def load_account(keystore: Path | None, dev_account: int) -> Any:
    """The LocalAccount the command signs with (see the module docstring for the order)."""
    from eth_account import Account

    from shardnet.chain import dev_account as dev

    if keystore is not None:
        password = os.environ.get("SHARDNET_KEYSTORE_PASSWORD")
        if password is None:
            password = click.prompt(f"password for {keystore}", hide_input=True)
        try:
            return Account.from_key(Account.decrypt(json.loads(keystore.read_text()), password))
        except (ValueError, KeyError) as exc:
            raise click.BadParameter(f"cannot decrypt {keystore}: {exc}", param_hint="--keystore") from None
    if os.environ.get("SHARDNET_KEY"):
        try:
            return Account.from_key(os.environ["SHARDNET_KEY"])
        except (ValueError, TypeError) as exc:
            raise click.BadParameter(
                f"SHARDNET_KEY is not a private key: {exc}; set it to 0x + 64 hex digits"
            ) from None
    return dev(dev_account)
