"""`caduceus backup` and `caduceus restore`: a state dir in one file, and back into a new state dir.

Exit codes: 0 done; 1 the backup file is damaged or not a Caduceus backup; 2 the command cannot do its job as asked
(no such state dir or file, a stack running, a non-empty target without --force).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from caduceus_embedded.backup import BackupDamaged, BackupRefused, Manifest, back_up, restore
from caduceus_embedded.layout import StateLayout
from caduceus_embedded.stackinfo import default_state_dir

out = Console(soft_wrap=True, highlight=False)
err = Console(stderr=True, soft_wrap=True, highlight=False)

USAGE, BAD_NEWS = 2, 1
WHAT_IS_IN_IT = (
    "A backup holds keys/ (signing keys and bus credentials), the SQLite stores (audit.db, identity.db, Temporal's "
    "temporal.db: each copied with SQLite's backup API, consistent while services write), tenants.yaml, the policy "
    "pack and sandbox files, and the JetStream store (the event stream, consumers, policy-pack buckets), copied as "
    "files while no nats-server runs. Not in it: workspaces/, workers/ (Hermes homes and memory), logs/; an audit "
    "store on PostgreSQL (pg_dump it; the backup notes how).")


def register(app: typer.Typer) -> None:
    app.command(name="backup", help=(
        "Back up a state dir into one file (a gzipped tar with a manifest of every file's SHA-256).\n\n"
        f"{WHAT_IS_IN_IT}\n\n"
        "Stop the stack first (Ctrl-C in `caduceus up`): a running stack is refused, since its JetStream store is "
        "being written; --without-stream backs up the rest while it runs. The file holds every private key: keep it "
        "where you keep secrets (it is written with mode 0600).\n\n"
        "Progress goes to stderr; --json prints the manifest on stdout. Exit 0: written. Exit 2: no state dir, "
        "the file exists, or a stack runs.\n\n"
        "Example: caduceus backup --state-dir ~/.local/share/caduceus --out caduceus-$(date +%F).tar.gz"))(backup_cmd)
    app.command(name="restore", help=(
        "Restore a backup file into a state dir, then start the stack there (`caduceus up --state-dir DIR`).\n\n"
        "Every file is checked against the backup's manifest before anything is written, and each SQLite store's "
        "rows are counted again; keys come back with mode 0600. The target must be empty or new: --force "
        "replaces what the backup holds in a used one (its JetStream store included) and keeps other files.\n\n"
        "Progress goes to stderr; --json prints what was restored on stdout. Exit 0: restored. Exit 1: the file "
        "is damaged or not a Caduceus backup (nothing written). Exit 2: no such file, the target is not empty, or "
        "a stack runs there.\n\n"
        "Example: caduceus restore --state-dir /srv/caduceus-new caduceus-2026-12-04.tar.gz && "
        "caduceus audit verify --state-dir /srv/caduceus-new"))(restore_cmd)


def fail(message: str, code: int) -> NoReturn:
    err.print(f"[red]{escape(message)}[/red]")
    raise typer.Exit(code)


def progress(line: str) -> None:
    err.print(escape(line), style="dim")


def backup_cmd(
    out_file: Annotated[Path, typer.Option("--out", help="The backup file to write (must not exist yet).")],
    state_dir: Annotated[Path | None, typer.Option(
        help="The state dir to back up (default: $CADUCEUS_STATE_DIR or the user data dir).")] = None,
    audit_db: Annotated[str | None, typer.Option(
        "--audit-db", help="The audit store's URL when it is not <state dir>/audit.db; a PostgreSQL store is not "
                           "copied, the backup notes how to pg_dump it.",
        envvar="CADUCEUS_AUDIT_DB_URL", show_envvar=False)] = None,
    without_stream: Annotated[bool, typer.Option(
        "--without-stream", help="Leave the JetStream store out, to back up a running stack.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON on stdout.")] = False,
) -> None:
    layout = StateLayout((state_dir or default_state_dir()).expanduser().resolve())
    try:
        manifest = back_up(layout, out_file, audit_db=audit_db, with_stream=not without_stream, say=progress)
    except BackupRefused as exc:
        fail(str(exc), USAGE)
    for note in manifest.notes:
        err.print(f"[yellow]note: {escape(note)}[/yellow]")
    if as_json:
        print(json.dumps({"out": str(out_file), **_summary(manifest), "manifest": manifest.to_json()}, indent=2))
    else:
        out.print(f"backed up {layout.root} to {escape(str(out_file))}: {_said(manifest)}")


def restore_cmd(
    backup_file: Annotated[Path, typer.Argument(help="A file written by `caduceus backup`.")],
    state_dir: Annotated[Path, typer.Option(help="The state dir to restore into (new or empty).")],
    force: Annotated[bool, typer.Option(
        "--force", help="Restore into a state dir that is not empty, replacing what the backup holds.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print what was restored as JSON on stdout.")] = False,
) -> None:
    layout = StateLayout(state_dir.expanduser().resolve())
    try:
        manifest = restore(backup_file, layout, force=force, say=progress)
    except BackupRefused as exc:
        fail(str(exc), USAGE)
    except BackupDamaged as exc:
        fail(f"{exc}. Nothing was restored; use another backup.", BAD_NEWS)
    if as_json:
        print(json.dumps({"state_dir": str(layout.root), "backup": str(backup_file), **_summary(manifest),
                          "created_at": manifest.created_at, "notes": manifest.notes}, indent=2))
    else:
        out.print(f"restored {escape(str(backup_file))} into {layout.root}: {_said(manifest)}")
        out.print(f"next: caduceus audit verify --state-dir {layout.root}; caduceus up --state-dir {layout.root}")


def _summary(manifest: Manifest) -> dict[str, object]:
    return {"files": len(manifest.files),
            "keys": sorted(name for name in manifest.files if name.startswith("keys/")),
            "stores": {name: sum(rows.values()) for name, rows in manifest.sqlite_rows.items()},
            "audit_records": manifest.sqlite_rows.get("audit.db", {}).get("audit_record"),
            "stream": manifest.stream}


def _said(manifest: Manifest) -> str:
    summary = _summary(manifest)
    records = summary["audit_records"]
    return (f"{summary['files']} files, {len(summary['keys'])} keys, stores {', '.join(manifest.sqlite_rows) or 'none'}"  # type: ignore[arg-type]
            + (f" ({records} audit records)" if records is not None else "") + f"; JetStream: {manifest.stream}")
