"""The approvals API of the approval service, for the CLI, scripts and the demo: the same desk the web UI
answers through, authenticated with the approver's OIDC token."""

from __future__ import annotations

import asyncio
from typing import Literal

import httpx

from caduceus_contracts import ApprovalView


class ApprovalsError(RuntimeError):
    """The approvals API could not be reached or refused; the message says why."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ApprovalsClient:
    def __init__(self, base_url: str, token: str, *, timeout_s: float = 15.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout_s,
                                       headers={"Authorization": f"Bearer {token}"})

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "ApprovalsClient":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _call(self, method: str, path: str, **kwargs) -> dict:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ApprovalsError(f"the approvals API at {self.base_url} did not answer ({type(exc).__name__}); is "
                                 "the stack running? (`caduceus up` prints the approvals UI URL)") from None
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code != 200:
            detail = body.get("error") if isinstance(body, dict) else None
            raise ApprovalsError(detail or f"HTTP {response.status_code}", response.status_code)
        return body

    async def pending(self) -> list[ApprovalView]:
        """Approvals waiting for the token's person."""
        return [ApprovalView.model_validate(a) for a in (await self._call("GET", "/api/approvals"))["approvals"]]

    async def decided(self) -> list[ApprovalView]:
        body = await self._call("GET", "/api/approvals", params={"status": "decided"})
        return [ApprovalView.model_validate(a) for a in body["approvals"]]

    async def show(self, call_id: str) -> ApprovalView:
        return ApprovalView.model_validate((await self._call("GET", f"/api/approvals/{call_id}"))["approval"])

    async def answer(self, call_id: str, answer: Literal["approve", "deny"], *, digest: str,
                     comment: str = "", channel: str = "api") -> ApprovalView:
        """Approve or deny exactly the call with this digest; ApprovalsError (status 409) says why it did not count.

        `channel` names where the approver answered (recorded with the vote): `api`, `web-chat`, ...
        """
        body = await self._call("POST", f"/api/approvals/{call_id}/{answer}",
                                json={"digest": digest, "comment": comment, "channel": channel})
        return ApprovalView.model_validate(body["approval"])

    async def wait_for(self, predicate, *, timeout_s: float, poll_s: float = 0.2) -> ApprovalView:
        """The first pending approval matching `predicate`, polling until timeout_s (TimeoutError)."""
        async with asyncio.timeout(timeout_s):
            while True:
                for view in await self.pending():
                    if predicate(view):
                        return view
                await asyncio.sleep(poll_s)
