"""`shardnet gateway`: the OpenAI-compatible HTTP gateway (shardnet/gateway.py)."""

from __future__ import annotations

from pathlib import Path

import click

from shardnet.cli.root import main
from shardnet.keys import key_options, load_account


@main.command("gateway")
@click.option(
    "--keys",
    "keys_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help='API keys and budgets: {"keys": {"sk-...": {"budget_wei": N}}}',
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8400, show_default=True, type=int)
@click.option("--job-timeout", default=300, show_default=True, type=int, help="seconds a request waits for its job")
@key_options(default_dev_account=12)
def gateway(keys_path: Path, host: str, port: int, job_timeout: int, keystore: Path | None, dev_account: int) -> None:
    """Serve the OpenAI API (/v1/models, /v1/completions, /v1/chat/completions, /v1/embeddings);
    every request becomes an on-chain job paid from this wallet."""
    import uvicorn

    from shardnet.client import Client
    from shardnet.gateway import Gateway, KeyBook, create_app

    account = load_account(keystore, dev_account)
    client = Client.from_deployment(account)
    app = create_app(Gateway(client, KeyBook(keys_path), job_timeout))
    click.echo(f"OpenAI-compatible gateway on http://{host}:{port}/v1 (wallet {account.address})", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
