"""The gateway's callers: API keys with a budget each, and errors in OpenAI's format."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from fastapi.responses import JSONResponse

from shardnet.errors import ShardnetError


class ApiError(Exception):
    """An error the caller sees in OpenAI's format."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code

    def response(self) -> JSONResponse:
        return JSONResponse(
            {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}},
            status_code=self.status,
        )


# ---------------------------------------------------------------------- API keys and budgets
class KeyBook:
    """API keys with a budget each (wei), from a JSON file `{"keys": {"KEY": {"budget_wei": N}}}`;
    what each key spent lives in `<file>.spent.json`. A request reserves its escrow first and is
    charged what the job actually paid out once it ends."""

    def __init__(self, path: Path):
        try:
            data = json.loads(path.read_text())
            self.budgets = {str(k): int(v["budget_wei"]) for k, v in data["keys"].items()}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ShardnetError(
                f"cannot read API keys from {path} ({exc}); write it as "
                '{"keys": {"sk-...": {"budget_wei": 100000000000000000}}}'
            ) from None
        self.spent_path = path.with_name(path.name + ".spent.json")
        self.spent: dict[str, int] = json.loads(self.spent_path.read_text()) if self.spent_path.exists() else {}
        self.reserved: dict[str, int] = {}
        self._lock = threading.Lock()

    def check(self, header: str | None) -> str:
        key = (header or "").removeprefix("Bearer ").strip()
        if key not in self.budgets:
            raise ApiError(
                401,
                "invalid API key: pass one from the gateway's key file as 'Authorization: Bearer KEY'",
                "authentication_error",
                code="invalid_api_key",
            )
        return key

    def reserve(self, key: str, amount: int) -> None:
        with self._lock:
            left = self.budgets[key] - self.spent.get(key, 0) - self.reserved.get(key, 0)
            if amount > left:
                raise ApiError(
                    429,
                    f"this key's budget has {left} wei left and the job needs {amount} wei in escrow; "
                    "ask the gateway's operator to raise it",
                    "insufficient_quota",
                    code="insufficient_quota",
                )
            self.reserved[key] = self.reserved.get(key, 0) + amount

    def settle(self, key: str, reserved: int, charged: int) -> None:
        with self._lock:
            self.reserved[key] -= reserved
            self.spent[key] = self.spent.get(key, 0) + charged
            tmp = self.spent_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.spent))
            tmp.replace(self.spent_path)
