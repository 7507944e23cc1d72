"""Models the gateway serves: on-chain models by name or id, with their tokenizers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shardnet.client import Client
from shardnet.gateway.accounts import ApiError
from shardnet.model.manifest import fetch_manifest, fetch_tokenizer


@dataclass
class ServedModel:
    model_id: int
    name: str
    owner: str
    tokenizer: Any | None


class Models:
    """On-chain models by name or id, with their tokenizers (fetched from IPFS once). A name means
    the newest model registered under it when the gateway first resolves it (restart the gateway
    to pick up a newer one)."""

    def __init__(self, client: Client):
        self.client = client
        self._cache: dict[int, ServedModel] = {}
        self._by_name: dict[str, int] = {}  # names (and ids) resolved so far

    def listing(self) -> list[dict[str, Any]]:
        out = []
        for model_id in range(1, self.client.c.models.model_count() + 1):
            m = self.client.c.models.model(model_id)
            if not m.deprecated:
                out.append(
                    {
                        "id": m.name or str(model_id),
                        "object": "model",
                        "created": 0,
                        "owned_by": m.owner,
                        "shardnet_model_id": model_id,
                        "blocks": m.block_count,
                    }
                )
        return out

    def resolve(self, name: object) -> ServedModel:
        if not isinstance(name, str) or not name:
            raise ApiError(400, "'model' is required: a model's on-chain name or id (see /v1/models)", param="model")
        if name in self._by_name:  # resolved before: no chain reads on the request path
            return self._cache[self._by_name[name]]
        count = self.client.c.models.model_count()
        model_id = int(name) if name.isdigit() else None
        if model_id is None:
            model_id = next((i for i in range(count, 0, -1) if self.client.c.models.model(i).name == name), None)
        if model_id is None or not 1 <= model_id <= count:
            raise ApiError(
                404,
                f"model {name!r} is not registered on this network; see /v1/models",
                param="model",
                code="model_not_found",
            )
        if model_id not in self._cache:
            m = self.client.c.models.model(model_id)
            manifest = fetch_manifest(self.client.ipfs, m.manifest_cid)
            self._cache[model_id] = ServedModel(
                model_id, m.name or str(model_id), m.owner, fetch_tokenizer(self.client.ipfs, manifest)
            )
        self._by_name[name] = model_id
        return self._cache[model_id]
