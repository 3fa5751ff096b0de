"""`caduceus approvals list|show|approve|deny`: the approver's inbox from a terminal.

It uses the approval service's API with the approver's OIDC token, so it is authorized exactly
like the web UI: same tenant, same panel, same separation of duties, same audit of refusals.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from caduceus.commands.chat import mint_token
from caduceus.scripting import BAD, USAGE, AsJson, print_json, suggest
from caduceus.stackref import require_stack
from caduceus_client import ApprovalsClient, ApprovalsError
from caduceus_contracts import ApprovalView, utcnow

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)
app = typer.Typer(help="List, inspect and answer tool calls waiting for approval (as an approver).\n\n"
                       "Example: caduceus approvals list --user carol; caduceus approvals approve CALL_ID --user carol",
                  no_args_is_help=True)

Tenant = Annotated[str, typer.Option(help="Your tenant (demo: acme).")]
User = Annotated[str, typer.Option(help="Who you are (demo approvers: carol); a dev token is minted for them.")]
Token = Annotated[str | None, typer.Option(help="Your OIDC token instead of a dev token.", envvar="CADUCEUS_TOKEN")]
Url = Annotated[str | None, typer.Option(help="The approvals API (default: the running stack's approvals UI).",
                                         envvar="CADUCEUS_APPROVALS_URL")]
StateDir = Annotated[Path | None, typer.Option(help="State dir of the running stack.")]


def register(parent: typer.Typer) -> None:
    parent.add_typer(app, name="approvals")


def _client(tenant: str, user: str, token: str | None, url: str | None, state_dir: Path | None) -> ApprovalsClient:
    if url is None or token is None:
        stack = require_stack(state_dir, err)
        url = url or stack.approval_ui_url
        token = token or mint_token(stack.dev_issuer_url, tenant, user)
    if not url:
        err.print("[red]the running stack has no approvals UI[/red]: pass --url")
        raise typer.Exit(USAGE)
    return ApprovalsClient(url, token)


def _run(coro):
    try:
        return asyncio.run(coro)
    except ApprovalsError as exc:
        # No HTTP status: the API did not answer at all (exit 2); with one, it refused (exit 1).
        err.print(f"[red]{'refused' if exc.status else 'unreachable'}:[/red] {escape(str(exc))}")
        raise typer.Exit(USAGE if exc.status is None else BAD) from None


def _left(view: ApprovalView) -> str:
    seconds = int((view.expires_at - utcnow()).total_seconds())
    return "expired" if seconds <= 0 else f"{seconds // 60} min {seconds % 60} s"


@app.command("list", help="Tool calls waiting for you (or decided ones with --decided).")
def list_(tenant: Tenant = "acme", user: User = "carol", token: Token = None, url: Url = None,
          decided: Annotated[bool, typer.Option(help="Show decided approvals instead.")] = False,
          as_json: AsJson = False, state_dir: StateDir = None) -> None:
    async def fetch() -> list[ApprovalView]:
        async with _client(tenant, user, token, url, state_dir) as client:
            return await (client.decided() if decided else client.pending())

    views = _run(fetch())
    if as_json:
        print_json([v.model_dump(mode="json") for v in views])
        return
    if not views:
        out.print("nothing decided yet" if decided else "nothing waits for you")
        return
    table = Table(show_edge=False)
    # Copied into `show`/`approve`/`deny`: never wrapped, never cut (a narrow terminal shrinks the other columns).
    table.add_column("call id", no_wrap=True, min_width=max(len(view.call_id) for view in views))
    for column in ("tool", "asked by", "status" if decided else "time left", "reason"):
        table.add_column(column)
    for view in views:
        table.add_row(view.call_id, view.tool, view.requester, view.status if decided else _left(view),
                      escape(view.resolution if decided else view.reason))
    out.print(table)


@app.command(help="One approval in full: who asked, the arguments, why, who may answer, the answers so far.")
def show(call_id: Annotated[str, typer.Argument(help="The call id (from `caduceus approvals list`).")],
         tenant: Tenant = "acme", user: User = "carol", token: Token = None, url: Url = None, as_json: AsJson = False,
         state_dir: StateDir = None) -> None:
    async def fetch() -> ApprovalView:
        async with _client(tenant, user, token, url, state_dir) as client:
            return await client.show(call_id)

    view = _run(fetch())
    if as_json:
        print_json(view.model_dump(mode="json"))
        return
    grid = Table.grid(padding=(0, 2))
    grid.add_column(no_wrap=True)
    grid.add_column(overflow="fold")  # folded, never cut: nothing shown here is shortened
    risky = {f.argument for f in view.facts if f.argument}
    rows = [("call", f"{view.tool} {view.call_id} ({view.status})"), ("asked by", f"{view.requester} in {view.workspace}"),
            ("conversation", f"{view.conversation} (session {view.session_id})"), ("why", view.explanation or view.reason)]
    rows += [(f"arg {name}" + (" [risky]" if name in risky else ""), json.dumps(value, ensure_ascii=False))
             for name, value in view.args.items()]
    rows += [("approvers", f"{view.asked_of}: {', '.join(view.approvers)} "
                                                    f"({view.quorum} needed)"),
             ("expires", f"{view.expires_at.isoformat()} ({_left(view)})")]
    rows += [(f"answer {v.approver}", f"{v.answer} {v.comment}") for v in view.votes]
    if view.resolution:
        rows.append(("result", view.resolution))
    for label, value in rows:
        grid.add_row(escape(label), escape(value))
    out.print(grid)
    # The digest on one line of its own (a terminal may wrap it, but it is one word to copy into --digest).
    out.print(f"digest  {view.digest}", markup=False, soft_wrap=True)
    if view.status == "pending":
        options = _given(tenant, user, url, state_dir)
        # A token is never printed: the hint says to give it again (CADUCEUS_TOKEN or --token).
        out.print("answer exactly this call: " + suggest("caduceus approvals approve", view.call_id, **options,
                                                         digest=view.digest)
                  + (" (with your token again: CADUCEUS_TOKEN or --token)" if token else ""),
                  markup=False, soft_wrap=True)


def _given(tenant: str, user: str, url: str | None, state_dir: Path | None) -> dict[str, object]:
    """The options given to this command that the next one needs (defaults left out)."""
    return {"tenant": None if tenant == "acme" else tenant, "user": None if user == "carol" else user,
            "url": url, "state_dir": state_dir}


def _answer(verdict: str, call_id: str, comment: str, digest: str | None, tenant: str, user: str, token: str | None,
            url: str | None, state_dir: Path | None, as_json: bool) -> None:
    async def send() -> ApprovalView:
        async with _client(tenant, user, token, url, state_dir) as client:
            # Answer exactly the call reviewed: the digest given, else the one `show` prints now.
            return await client.answer(call_id, verdict, digest=digest or (await client.show(call_id)).digest,
                                       comment=comment)

    view = _run(send())
    if as_json:
        print_json(view.model_dump(mode="json"))
        return
    out.print(f"{view.status}: {escape(view.resolution or f'{len(view.votes)}/{view.quorum} approvals so far')}")


Comment = Annotated[str, typer.Option(help="Why (kept with the decision).")]
Digest = Annotated[str | None, typer.Option(help="The call digest you reviewed (from `show`); an answer for any "
                                                 "other digest is refused.")]
CallId = Annotated[str, typer.Argument(help="The call id (from `caduceus approvals list`).")]


@app.command(help="Approve a call: it runs once enough approvers agree.")
def approve(call_id: CallId, comment: Comment = "", digest: Digest = None, tenant: Tenant = "acme", user: User = "carol",
            token: Token = None, url: Url = None, state_dir: StateDir = None, as_json: AsJson = False) -> None:
    _answer("approve", call_id, comment, digest, tenant, user, token, url, state_dir, as_json)


@app.command(help="Deny a call: it never runs.")
def deny(call_id: CallId, comment: Comment = "", digest: Digest = None, tenant: Tenant = "acme", user: User = "carol",
         token: Token = None, url: Url = None, state_dir: StateDir = None, as_json: AsJson = False) -> None:
    _answer("deny", call_id, comment, digest, tenant, user, token, url, state_dir, as_json)
