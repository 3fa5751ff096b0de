"""`caduceus policy`: check, test, evaluate, diff and publish policy packs.

Everything but `publish` and `stop-shadow` works without a running stack: packs, the
tenants file and the audit store are read from disk.
"""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from caduceus.scripting import BAD, USAGE, AsJson, print_json, require_readable, suggest
from caduceus.stackref import require_stack
from caduceus_bus import BusSettings
from caduceus_embedded import StateLayout, default_state_dir
from caduceus_policy import (
    CedarEngine,
    HostPaths,
    PackError,
    Verdict,
    decide_model_call,
    load_engine,
    parse_duration,
    parse_test_file,
    request_facts,
    run_cases,
    turn_limits,
)

console = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
COLORS = {"allow": "green", "deny": "red", "approve": "yellow"}
BUS_CONNECT_TIMEOUT_S = 5.0

policy_app = typer.Typer(
    help="Policy packs: check and test them like code, see one decision explained, compare two packs on the calls "
         "people really made, and put a pack live.\n\n"
         "A pack is a YAML file (or a directory of YAML and Cedar files); the embedded stack's is "
         "<state dir>/policy.yaml. Start with `caduceus policy test <pack>`.",
    no_args_is_help=True,
)
STATE_DIR_HELP = "State dir of the embedded stack (default: CADUCEUS_STATE_DIR or the user data dir)."


def _shipped(name: str) -> Path:
    from importlib import resources

    with resources.as_file(resources.files("caduceus_embedded") / "defaults" / name) as path:
        return Path(path)


def _state_file(state_dir: Path | None, name: str) -> Path:
    """The state dir's copy of a default file if it has one, else the shipped default."""
    candidate = (state_dir or default_state_dir()) / name
    return candidate if candidate.exists() else _shipped(name)


def _engine(path: Path, as_json: bool = False) -> CedarEngine:
    """The pack at `path`: exit 2 if it cannot be read, 1 if it does not validate (with --json, as a document)."""
    require_readable(path, "the pack", err)
    try:
        return load_engine(path)
    except PackError as exc:
        err.print(f"[red]invalid pack[/red]: {escape(str(exc))}")
        if as_json:
            print_json({"ok": False, "pack": str(path), "problem": str(exc)})
        raise typer.Exit(BAD) from None


@policy_app.command("check")
def check(
    path: Path = typer.Argument(..., help="The pack: a .yaml or .cedar file, or a directory of them."),
    cedar: bool = typer.Option(False, "--cedar", help="Also print the Cedar every tenant's rules compile to."),
    as_json: AsJson = False,
) -> None:
    """Validate a pack: every file, rule and fact is checked; a mistake is reported with its file, line and fix.

    Exit 0: valid. Exit 1: it does not validate. Exit 2: it cannot be read.
    """
    engine = _engine(path, as_json)
    pack = engine.pack
    rules = sum(len(t.policies) for t in engine.tenants.values())
    if as_json:
        print_json({"ok": True, "pack": str(path), "version": pack.version, "tenants": sorted(pack.tenants),
                    "cedar_policies": rules, "test_cases": len(pack.tests),
                    **({"cedar": {tenant: engine.cedar_text(tenant) for tenant in engine.tenants}} if cedar else {})})
        return
    console.print(f"[green]ok[/green]: pack [bold]{escape(pack.version)}[/bold] from {escape(str(path))}: "
                  f"{len(pack.tenants)} tenant(s), {rules} Cedar policies, {len(pack.tests)} test case(s)")
    if cedar:
        for tenant in engine.tenants:
            console.print(f"\n// tenant {tenant}\n{escape(engine.cedar_text(tenant))}")


@policy_app.command("test")
def test(
    path: Path = typer.Argument(..., help="A pack with `tests:` in it, or a tests file (`pack:` and `cases:`)."),
    pack_path: Path | None = typer.Option(None, "--pack", help="The pack to test a tests file against (default: "
                                                               "the tests file's `pack:`)."),
    as_json: AsJson = False,
) -> None:
    """Run policy test cases: each case is a call (tenant, user, roles, tool, args) and the decision it must get.

    Case format (in the pack under `tests:`, or in a tests file under `cases:`):

        - {name: rm needs approval, tenant: acme, user: alice, roles: [member], tool: terminal,
           args: {command: "rm -rf build"}, expect: approve, expect_ids: [destructive-commands-need-approval]}

    Exit 0: every case passed. Exit 1: a case failed, or the pack or tests file does not validate. Exit 2: a
    file cannot be read, or a tests file names no pack.
    """
    cases = None
    require_readable(path, "the pack or tests file", err)
    if path.is_file() and path.suffix in (".yaml", ".yml") and _is_tests_file(path):
        try:
            pack_ref, cases = parse_test_file(path.read_text(encoding="utf-8"), str(path))
        except PackError as exc:
            err.print(f"[red]invalid tests file[/red]: {escape(str(exc))}")
            raise typer.Exit(BAD) from None
        if pack_path is None:
            if pack_ref is None:
                err.print(f"{path} does not say which pack it tests: add `pack: <path>` or pass --pack")
                raise typer.Exit(USAGE)
            pack_path = path.parent / pack_ref
    engine = _engine(pack_path or path)
    cases = cases if cases is not None else list(engine.pack.tests)
    if not cases:
        err.print(f"no test cases: add `tests:` to the pack {pack_path or path}, or give a tests file")
        raise typer.Exit(BAD)
    results = run_cases(engine, cases)
    failed = sum(not r.passed for r in results)
    if as_json:
        print_json({"ok": not failed, "pack": str(pack_path or path), "version": engine.version,
                    "passed": len(results) - failed, "failed": failed,
                    "cases": [{"name": r.case.name, "source": str(r.case.source), "passed": r.passed,
                               "expected": r.case.expect, "decision": r.verdict.verdict,
                               "policy_ids": list(r.verdict.policy_ids), "problem": r.problem,
                               "reason": r.verdict.reason} for r in results]})
        raise typer.Exit(BAD if failed else 0)
    for result in results:
        mark = "[green]PASS[/green]" if result.passed else "[red]FAIL[/red]"
        console.print(f"{mark} {escape(result.case.name)} ({escape(str(result.case.source))}): "
                      f"{result.verdict.verdict}" + ("" if result.passed else f" - {escape(result.problem)}; "
                                                                             f"{escape(result.verdict.reason)}"))
    console.print(f"{len(results) - failed} passed, {failed} failed (pack {escape(engine.version)})")
    if failed:
        raise typer.Exit(BAD)


def _is_tests_file(path: Path) -> bool:
    return bool(re.search(r"(?m)^cases:", path.read_text(encoding="utf-8", errors="replace")))


def _roles(tenants_file: Path, tenant: str, user: str) -> tuple[str, ...]:
    from caduceus_directory import DirectoryError, load_directory
    from caduceus_oidc import Refused

    require_readable(tenants_file, "tenants file", err)
    try:
        return tuple(load_directory(tenants_file).user(tenant, user).roles)
    except DirectoryError as exc:
        err.print(f"[red]tenants file[/red]: {escape(str(exc))}")
        raise typer.Exit(BAD) from None
    except Refused as exc:
        err.print(f"[red]{escape(exc.reason)}[/red] in {tenants_file}: check --tenant and --user (or --tenants-file)")
        raise typer.Exit(USAGE) from None


def _shown_facts(facts: dict[str, Any]) -> dict[str, Any]:
    """The facts that hold (true, non-empty), as JSON values."""
    shown = {}
    for name, value in sorted(facts.items()):
        if name in ("tenant", "workspace", "user", "tool", "roles") or value in (False, "", None) or value == set():
            continue
        shown[name] = sorted(value) if isinstance(value, set | frozenset | tuple | list) else value
    return shown


def _verdict_json(verdict: Verdict) -> dict[str, Any]:
    return {
        "decision": verdict.verdict, "reason": verdict.reason, "policy_ids": list(verdict.policy_ids),
        "approver_group": verdict.approver_group, "quorum": verdict.quorum,
        "approval_timeout_s": verdict.approval_timeout_s,
        "limits": [{"id": limit.id, "applies": limit.describe()} for limit in verdict.limits],
        "facts": _shown_facts(dict(verdict.facts)),
    }


@policy_app.command("eval")
def evaluate(
    tenant: str = typer.Option(..., "--tenant", help="Tenant of the user, e.g. acme."),
    user: str = typer.Option(..., "--user", help="User name in that tenant; their roles come from tenants.yaml."),
    tool: str | None = typer.Option(None, "--tool", help="Tool name as Hermes calls it, e.g. terminal, write_file."),
    prompt: str | None = typer.Option(None, "--prompt", help="Decide a model call with this prompt instead of a tool "
                                                             "call: the upstream the pack routes it to, the data "
                                                             "classes found, what is redacted or denied (budgets are "
                                                             "checked by the running service)."),
    args: str = typer.Option("{}", "--args", help='The call\'s arguments as a JSON object, e.g. \'{"command": "ls"}\'.'),
    pack: Path | None = typer.Option(None, "--pack", help="Pack to decide with (default: the state dir's "
                                                          "policy.yaml, else the shipped default pack)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (`decision` is allow, deny or "
                                                       "approve) instead of text. Exit 0 whatever the decision."),
    workspace: str = typer.Option("default", "--workspace", help="Workspace the call runs in."),
    tenants_file: Path | None = typer.Option(None, "--tenants-file", help="Tenants file with users and roles "
                                                                           "(default: the state dir's tenants.yaml, "
                                                                           "else the shipped demo one)."),
    state_dir: Path | None = typer.Option(None, "--state-dir", help=STATE_DIR_HELP),
) -> None:
    """Decide one call without a running stack, and explain why: the decision, the policies that made it, the facts.

    Examples: caduceus policy eval --tenant acme --user alice --tool terminal --args '{"command": "rm -rf build"}'
              caduceus policy eval --tenant acme --user alice --prompt "summarise this TOP SECRET memo"
    """
    if (tool is None) == (prompt is None):
        err.print("[red]give --tool (a tool call) or --prompt (a model call)[/red], one of them")
        raise typer.Exit(2)
    if prompt is not None:
        _evaluate_prompt(tenant, user, prompt, pack, as_json, workspace, tenants_file, state_dir)
        return
    assert tool is not None
    try:
        arguments = json.loads(args)
    except json.JSONDecodeError as exc:
        err.print(f"[red]--args is not JSON[/red] ({exc.msg} at column {exc.colno}): pass an object such as "
                  "'{\"command\": \"ls\"}'")
        raise typer.Exit(2) from None
    if not isinstance(arguments, dict):
        err.print("[red]--args must be a JSON object[/red] (the tool's named arguments), e.g. '{\"path\": \"a.txt\"}'")
        raise typer.Exit(2)
    roles = _roles(tenants_file or _state_file(state_dir, "tenants.yaml"), tenant, user)
    pack_path = pack or _state_file(state_dir, "policy.yaml")
    engine = _engine(pack_path)
    root = StateLayout(state_dir or default_state_dir()).workspaces / tenant / workspace
    verdict = engine.decide(request_facts(tenant, roles, tool, arguments, PurePosixPath(root), user=user,
                                          workspace=workspace, resolver=HostPaths()))
    guardrails = _turn_limits(engine, tenant, roles, workspace)
    if as_json:
        print_json({**_verdict_json(verdict), "pack_version": engine.version, "pack": str(pack_path),
                     "tenant": tenant, "user": user, "roles": list(roles), "tool": tool,
                     "turn_guardrails": guardrails.as_json()})
        return
    color = COLORS[verdict.verdict]
    console.print(f"[bold {color}]{verdict.verdict}[/bold {color}]: {escape(verdict.reason)}")
    console.print(f"  policies: {', '.join(verdict.policy_ids) or '(none: nothing permits it)'}")
    console.print(f"  pack: {escape(engine.version)} ({escape(str(pack_path))}); {user}@{tenant} roles: "
                  f"{', '.join(roles) or '(none)'}")
    if verdict.verdict == "approve":
        console.print(f"  approvers: {verdict.approver_group}, quorum {verdict.quorum}, within "
                      f"{verdict.approval_timeout_s:g} s")
    for limit in verdict.limits:
        console.print(f"  limit {limit.id}: {limit.describe()} (checked by the running service)")
    console.print(f"  turn guardrails: {escape(guardrails.describe())} (per turn, counted by the running service)")
    facts = _shown_facts(dict(verdict.facts))
    if facts:
        console.print("  facts: " + escape(", ".join(f"{k}={v}" for k, v in facts.items())))


def _evaluate_prompt(tenant: str, user: str, prompt: str, pack: Path | None, as_json: bool, workspace: str,
                     tenants_file: Path | None, state_dir: Path | None) -> None:
    """`policy eval --prompt`: a model call decided from the pack alone, as the service decides it after budgets."""
    roles = _roles(tenants_file or _state_file(state_dir, "tenants.yaml"), tenant, user)
    pack_path = pack or _state_file(state_dir, "policy.yaml")
    engine = _engine(pack_path)
    verdict = decide_model_call(engine.pack.tenants.get(tenant), roles=roles, workspace=workspace, prompt=prompt)
    redact = [spec.name for spec in verdict.redact_prompt]
    guardrails = _turn_limits(engine, tenant, roles, workspace)
    if as_json:
        print_json({"decision": verdict.verdict, "reason": verdict.reason, "policy_ids": list(verdict.policy_ids),
                    "upstream": verdict.upstream or None, "data_classes": list(verdict.data_classes),
                    "redact_prompt": redact,
                    "response_rules": {**{s.name: "redact" for s in verdict.redact_response},
                                       **{s.name: "deny" for s in verdict.deny_response}},
                    "pack_version": engine.version, "pack": str(pack_path), "tenant": tenant, "user": user,
                    "roles": list(roles), "workspace": workspace, "turn_guardrails": guardrails.as_json()})
        return
    color = COLORS[verdict.verdict]
    console.print(f"[bold {color}]{verdict.verdict}[/bold {color}] (model call): {escape(verdict.reason)}")
    console.print(f"  policies: {', '.join(verdict.policy_ids) or '(none)'}")
    console.print(f"  data classes in the prompt: {', '.join(verdict.data_classes) or '(none)'}")
    if redact:
        console.print(f"  redacted before it leaves: {', '.join(redact)}")
    console.print(f"  pack: {escape(engine.version)} ({escape(str(pack_path))}); {user}@{tenant} roles: "
                  f"{', '.join(roles) or '(none)'}; budgets are checked by the running service")
    console.print(f"  turn guardrails: {escape(guardrails.describe())} (per turn, counted by the running service)")


def _turn_limits(engine: Any, tenant: str, roles: tuple[str, ...], workspace: str) -> Any:
    """The per-turn limits of the pack's `guardrails:` that hold for this person in this workspace."""
    policy = engine.pack.tenants.get(tenant) if getattr(engine, "pack", None) is not None else None
    return turn_limits(policy.guardrails if policy is not None else (), roles, workspace)


def _clipped(text: str, limit: int = 200) -> str:
    """Arguments shortened for a terminal line; --json has them whole."""
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _since(value: str | None) -> datetime | None:
    if value is None:
        return None
    seconds = parse_duration(value)
    if seconds is not None:
        return datetime.now(UTC) - timedelta(seconds=seconds)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        err.print(f"[red]--since {value!r}[/red]: give a duration (24h, 7d) or an ISO time (2026-11-26T09:00)")
        raise typer.Exit(2) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@policy_app.command("diff")
def diff(
    old: Path = typer.Argument(..., help="The pack decisions were made with (or any pack to compare from)."),
    new: Path = typer.Argument(..., help="The candidate pack."),
    db: str | None = typer.Option(None, "--db", help="Audit store URL, e.g. sqlite:///path/audit.db or "
                                                     "postgresql://... (default: the state dir's audit.db)."),
    tenant: str | None = typer.Option(None, "--tenant", help="Only this tenant's calls."),
    since: str | None = typer.Option(None, "--since", help="Only calls from this long ago (24h, 7d) or this ISO "
                                                           "time on."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object with the counts and every change."),
    show: int = typer.Option(50, "--show", help="How many changed calls to list."),
    state_dir: Path | None = typer.Option(None, "--state-dir", help=STATE_DIR_HELP),
) -> None:
    """What would change if NEW replaced OLD, on the tool calls the audit trail recorded.

    Every recorded call is decided again with both packs (arguments as stored: secrets were redacted
    before storage) and each call whose decision differs is listed.
    """
    from caduceus_audit import AuditStore, StoreUnavailable, recorded_calls

    old_engine, new_engine = _engine(old), _engine(new)
    layout = StateLayout(state_dir or default_state_dir())
    if db is None and not layout.audit_db.exists():
        err.print(f"no audit store at {layout.audit_db}: run the stack "
                  f"(`{suggest('caduceus up', state_dir=state_dir)}`) so calls get recorded, or pass --db URL")
        raise typer.Exit(USAGE)
    url = db or layout.audit_db_url
    changes: list[dict[str, Any]] = []
    total = 0
    try:
        store = AuditStore(url)
        for call in recorded_calls(store, tenant=tenant, since=_since(since)):
            total += 1
            root = PurePosixPath(layout.workspaces) / call.tenant / call.workspace
            facts = request_facts(call.tenant, call.roles, call.tool, call.args, root, user=call.user,
                                  workspace=call.workspace)
            before, after = old_engine.decide(facts), new_engine.decide(facts)
            if (before.verdict, before.policy_ids) != (after.verdict, after.policy_ids):
                changes.append({"call_id": call.call_id, "tenant": call.tenant, "user": call.user, "tool": call.tool,
                                "occurred_at": call.occurred_at.isoformat(), "recorded": call.verdict,
                                "old": before.verdict, "new": after.verdict, "old_policy_ids": list(before.policy_ids),
                                "new_policy_ids": list(after.policy_ids), "new_reason": after.reason,
                                "args": call.args})
        store.close()
    except StoreUnavailable as exc:
        err.print(f"[red]audit store unavailable[/red] ({escape(url)}): {escape(str(exc))}")
        raise typer.Exit(USAGE) from None
    verdict_changes = [c for c in changes if c["old"] != c["new"]]
    summary = {"old_version": old_engine.version, "new_version": new_engine.version, "calls": total,
               "changed": len(changes), "verdicts_changed": len(verdict_changes), "changes": changes}
    if as_json:
        print_json(summary)
        return
    console.print(f"{total} recorded call(s); {len(verdict_changes)} would get another decision and "
                  f"{len(changes) - len(verdict_changes)} the same decision for other reasons, under "
                  f"{escape(new_engine.version)} instead of {escape(old_engine.version)}")
    for change in changes[:show]:
        args = _clipped(json.dumps(change["args"], sort_keys=True))
        console.print(f"  {change['occurred_at'][:19]} {change['user']}@{change['tenant']} {change['tool']} "
                      f"{escape(args)}\n    [{COLORS[change['old']]}]{change['old']}[/] -> "
                      f"[{COLORS[change['new']]}]{change['new']}[/] ({', '.join(change['new_policy_ids'])}): "
                      f"{escape(change['new_reason'])}")
    if len(changes) > show:
        console.print(f"  ... and {len(changes) - show} more (--show N, or --json)")


async def _publish(bus: BusSettings, key: str, version: str | None, files: dict[str, str] | None) -> None:
    from caduceus_bus import EventConnection
    from caduceus_policy import PackStore

    # The services' connection retries forever; a command must give up and say the bus is unreachable.
    async with asyncio.timeout(BUS_CONNECT_TIMEOUT_S):
        conn = await EventConnection.connect(bus, "caduceus-policy-cli")
    try:
        store = await PackStore.open(conn.js, replicas=bus.stream_replicas)
        if files is None:
            await store.clear(key)
        else:
            await store.publish(key, version or "", files)
    finally:
        await conn.close()


def _operator_bus(nats_url: str | None, state_dir: Path | None) -> BusSettings:
    """The deployment's bus with this environment's credential (CADUCEUS_NATS_*), or the running stack's operator."""
    if nats_url:
        return BusSettings(nats_url=nats_url)
    return require_stack(state_dir, err).bus_settings("operator")


def _on_bus(work: Any) -> None:
    """Run `work` against the bus; a bus that cannot be reached is exit 2, with what to check."""
    import nats.errors

    try:
        asyncio.run(work)
    except (OSError, TimeoutError, nats.errors.Error) as exc:
        err.print(f"[red]cannot reach the bus[/red]: {escape(str(exc) or type(exc).__name__)}: check --nats-url "
                  "(and CADUCEUS_NATS_CREDENTIALS), or that the stack runs")
        raise typer.Exit(USAGE) from None


@policy_app.command("publish")
def publish(
    path: Path = typer.Argument(..., help="The pack to put live (checked, and its tests run, first)."),
    shadow: bool = typer.Option(False, "--shadow", help="Run it in shadow beside the live pack instead: it decides "
                                                        "nothing, and every call it would decide differently is "
                                                        "recorded as a policy.shadow.disagreed event."),
    nats_url: str | None = typer.Option(None, "--nats-url", help="NATS of the deployment, with the credential "
                                                                 "in CADUCEUS_NATS_CREDENTIALS (default: the "
                                                                 "running embedded stack, as its operator)."),
    state_dir: Path | None = typer.Option(None, "--state-dir", help=STATE_DIR_HELP),
) -> None:
    """Publish a pack to the bus: every policy replica checks it and hot-reloads it (an invalid one is refused)."""
    engine = _engine(path)
    failed = [r for r in run_cases(engine, engine.pack.tests) if not r.passed]
    if failed:
        err.print(f"[red]not published[/red]: {len(failed)} of the pack's tests fail "
                  f"(`{suggest('caduceus policy test', str(path))}`)")
        raise typer.Exit(BAD)
    key = "shadow" if shadow else "live"
    _on_bus(_publish(_operator_bus(nats_url, state_dir), key, engine.version, dict(engine.pack.files)))
    console.print(f"published pack [bold]{escape(engine.version)}[/bold] as the {key} pack; every policy replica "
                  "reloads it now")


@policy_app.command("stop-shadow")
def stop_shadow(
    nats_url: str | None = typer.Option(None, "--nats-url", help="NATS of the deployment, with the credential "
                                                                 "in CADUCEUS_NATS_CREDENTIALS (default: the "
                                                                 "running embedded stack, as its operator)."),
    state_dir: Path | None = typer.Option(None, "--state-dir", help=STATE_DIR_HELP),
) -> None:
    """Stop running a candidate pack in shadow."""
    _on_bus(_publish(_operator_bus(nats_url, state_dir), "shadow", None, None))
    console.print("the shadow pack is stopped")


def register(app: typer.Typer) -> None:
    app.add_typer(policy_app, name="policy")
