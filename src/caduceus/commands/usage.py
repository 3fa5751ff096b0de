"""`caduceus usage`: model tokens, cost, calls and refusals from the audit trail, by tenant, person, workspace,
model or day; text, --json or --csv."""

from __future__ import annotations

import csv
import io
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from caduceus.scripting import USAGE, print_json, suggest
from caduceus_audit import USAGE_DIMENSIONS, AuditStore, StoreUnavailable, usage_report
from caduceus_embedded import StateLayout, default_state_dir
from caduceus_policy import parse_duration

out = Console(soft_wrap=True, highlight=False)
err = Console(stderr=True, soft_wrap=True, highlight=False)
STATE_DIR_HELP = "State dir of the embedded stack (default: CADUCEUS_STATE_DIR or the user data dir)."


def register(app: typer.Typer) -> None:
    app.command(name="usage")(usage)


def usage(
    by: str = typer.Option("tenant", "--by", help=f"Group by any of {', '.join(USAGE_DIMENSIONS)}, comma-separated, "
                                                  "e.g. person,day."),
    tenant: str | None = typer.Option(None, "--tenant", help="Only this tenant."),
    since: str = typer.Option("30d", "--since", help="From this long ago (24h, 30d) or this ISO time on."),
    db: str | None = typer.Option(None, "--db", help="Audit store URL, e.g. sqlite:///path/audit.db or "
                                                     "postgresql://... (default: the state dir's audit.db)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object: `by` and `rows`."),
    as_csv: bool = typer.Option(False, "--csv", help="Print CSV with a header row instead of a table."),
    state_dir: Path | None = typer.Option(None, "--state-dir", help=STATE_DIR_HELP),
) -> None:
    """Model usage people can read: tokens (the upstreams' own counts), cost, calls and refusals, per group.

    Counted from what the inference gateway and policy recorded in the audit trail. Exit 0; 2 when the audit
    store cannot be read or an option is wrong. Tenant admins see the same numbers, with a 30-day chart, on the
    approvals UI's Usage page (/usage).

    Examples: caduceus usage --by person,day --tenant acme
              caduceus usage --by model --since 7d --csv > usage.csv
    """
    dimensions = tuple(d.strip() for d in by.split(",") if d.strip())
    bad = [d for d in dimensions if d not in USAGE_DIMENSIONS]
    if bad or not dimensions:
        err.print(f"[red]--by {escape(by)}[/red]: group by any of {', '.join(USAGE_DIMENSIONS)}, e.g. --by person,day")
        raise typer.Exit(USAGE)
    if as_json and as_csv:
        err.print("[red]--json and --csv[/red]: choose one")
        raise typer.Exit(USAGE)
    start = _since(since)
    layout = StateLayout(state_dir or default_state_dir())
    if db is None and not layout.audit_db.exists():
        err.print(f"no audit store at {layout.audit_db}: run the stack (`{suggest('caduceus up', state_dir=state_dir)}`)"
                  " so model calls get recorded, or pass --db URL")
        raise typer.Exit(USAGE)
    url = db or layout.audit_db_url
    try:
        store = AuditStore(url)
        try:
            report = usage_report(store, by=dimensions, tenant=tenant, since=start)
        finally:
            store.close()
    except StoreUnavailable as exc:
        err.print(f"[red]audit store unavailable[/red] ({escape(url)}): {escape(str(exc))}")
        raise typer.Exit(USAGE) from None
    rows = [row.as_dict() for row in report.rows]
    if as_json:
        print_json({"by": list(dimensions), "since": start.isoformat(), "tenant": tenant, "rows": rows})
        return
    columns = [*dimensions, "prompt_tokens", "completion_tokens", "tokens", "cost_usd", "calls", "refusals"]
    if as_csv:
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        sys.stdout.write(text.getvalue())
        return
    if not rows:
        out.print(f"no model calls recorded since {start:%Y-%m-%d %H:%M} UTC")
        return
    table = Table(*columns, title=f"model usage since {start:%Y-%m-%d %H:%M} UTC")
    for row in rows:
        table.add_row(*(escape(str(row[c])) for c in columns))
    out.print(table)


def _since(value: str) -> datetime:
    seconds = parse_duration(value)
    if seconds is not None:
        return datetime.now(UTC) - timedelta(seconds=seconds)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        err.print(f"[red]--since {escape(value)!r}[/red]: give a duration (24h, 30d) or an ISO time (2026-11-26T09:00)")
        raise typer.Exit(USAGE) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
