"""A state dir in one file, and back: `caduceus backup` and `caduceus restore`.

What a backup holds (the layout is StateLayout's):
- keys/: every signing key and bus credential, restored with mode 0600 (keys/ and keys/nats/ 0700);
- the SQLite stores (audit.db, identity.db, gateway.db with the web chat's conversations, mcp-pins.db with the
  MCP tool definitions approvers pinned, temporal/temporal.db), each copied with SQLite's online backup API,
  so the copy is consistent even while a service writes; the row count of each table goes in the manifest and
  is checked again after a restore;
- the operator's files: tenants.yaml, policy.yaml (a file or a pack directory), scenarios.yaml, sandbox.yaml,
  sandboxes/, the MCP registry (mcp.yaml) and its credentials (mcp-secrets/, mode 0600 like keys/), slack.yaml,
  database.url;
- nats/, the JetStream store: the event stream, its consumers' positions and the policy-pack and limit buckets.
  It is copied as files while no nats-server runs, which needs nothing to connect to and restores the stream
  exactly (same sequences, consumers carry on where they were); a stack running in the state dir is therefore
  refused unless the stream is left out.
Not in it: workspaces/ and workers/ (tenants' files and Hermes homes with their memory: copy them as files), logs/,
stack.json. Stores on PostgreSQL (an audit store given with --audit-db, or every store of a stack started with
`--database-url`) are not copied either; the manifest says how to dump them.

The file is a gzipped tar with manifest.json first (every file's SHA-256, size and mode); a restore checks every
file against it before anything lands in the state dir.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sqlite3
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from sqlalchemy.engine import make_url

from caduceus_embedded.layout import DEFAULT_FILES, StateLayout
from caduceus_embedded.stackinfo import read_stack_info

FORMAT = "caduceus-backup/1"
MANIFEST = "manifest.json"
SQLITE_STORES = ("audit.db", "identity.db", "gateway.db", "mcp-pins.db", "temporal/temporal.db")
# The stores a stack started with --database-url keeps in PostgreSQL instead (Temporal keeps its SQLite).
IN_DATABASE = ("audit.db", "identity.db", "gateway.db", "mcp-pins.db")
OPERATOR_FILES = (*DEFAULT_FILES, "sandboxes", "mcp.yaml", "mcp-secrets", "slack.yaml", "database.url")
SECRET_DIRS = ("keys", "mcp-secrets")
STREAM_DIR = "nats"


class BackupRefused(Exception):
    """The backup or restore cannot be done as asked (a usage problem, or something is running): exit 2."""


class BackupDamaged(Exception):
    """The backup file is not a sound Caduceus backup (unreadable, incomplete, altered): exit 1."""


@dataclass
class Manifest:
    """What a backup holds: each file's digest, size and mode; each SQLite store's rows per table; notes."""

    created_at: str
    source: str
    files: dict[str, dict[str, object]] = field(default_factory=dict)
    sqlite_rows: dict[str, dict[str, int]] = field(default_factory=dict)
    stream: str = "absent"
    notes: list[str] = field(default_factory=list)
    format: str = FORMAT

    def to_json(self) -> dict[str, object]:
        return {"format": self.format, "created_at": self.created_at, "source": self.source, "stream": self.stream,
                "sqlite_rows": self.sqlite_rows, "notes": self.notes, "files": self.files}

    @classmethod
    def from_json(cls, data: dict) -> Manifest:
        return cls(created_at=data["created_at"], source=data["source"], files=data["files"],
                   sqlite_rows=data["sqlite_rows"], stream=data["stream"], notes=list(data["notes"]),
                   format=data["format"])


Say = Callable[[str], None]


def back_up(layout: StateLayout, out: Path, *, audit_db: str | None = None, with_stream: bool = True,
            say: Say = lambda _line: None) -> Manifest:
    """Write the state dir's backup to `out` (a new file). `audit_db` is the audit store's URL when it is not the
    state dir's audit.db. Raises BackupRefused."""
    root = layout.root
    if not root.is_dir() or not (root / "keys").is_dir():
        raise BackupRefused(f"{root} is not a Caduceus state dir (no keys/ in it): pass --state-dir DIR, the one "
                            "`caduceus up` printed")
    if out.exists():
        raise BackupRefused(f"{out} already exists: choose another --out, or remove it first")
    running = read_stack_info(root)
    if running is not None and with_stream:
        raise BackupRefused(f"a stack is running in {root} (pid {running.pid}): the JetStream store is copied only "
                            "while no server writes it. Stop it (Ctrl-C in `caduceus up`) and back up again, or pass "
                            "--without-stream to back up everything else now (the SQLite stores are copied "
                            "consistently while services run)")
    manifest = Manifest(created_at=datetime.now(UTC).isoformat(timespec="seconds"), source=str(root))
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    with tempfile.TemporaryDirectory(prefix="caduceus-backup-") as scratch, tarfile.open(partial, "w:gz") as tar:
        entries: list[tuple[str, Path]] = []
        keys = sorted(path for path in (root / "keys").rglob("*") if path.is_file())
        entries += [(path.relative_to(root).as_posix(), path) for path in keys]
        say(f"keys: {len(keys)} files")
        for name, source in _sqlite_sources(layout, audit_db, manifest):
            copy = Path(scratch) / name.replace("/", "_")
            _sqlite_copy(source, copy)
            manifest.sqlite_rows[name] = table_rows(copy)
            entries.append((name, copy))
            say(f"{name}: copied with SQLite's backup API ({_describe_rows(manifest.sqlite_rows[name])})")
        for name in OPERATOR_FILES:
            entries += _files_below(root, root / name)
        say(f"operator files: {', '.join(n for n in OPERATOR_FILES if (root / n).exists()) or 'none'}")
        if not with_stream:
            manifest.stream = "left out (--without-stream)"
            say("JetStream store: left out (--without-stream)")
        elif (root / STREAM_DIR).is_dir():
            stream_files = _files_below(root, root / STREAM_DIR)
            entries += stream_files
            manifest.stream = "store directory, copied with no server running"
            say(f"JetStream store: {len(stream_files)} files ({_size(sum(p.stat().st_size for _, p in stream_files))})")
        for name, path in entries:
            manifest.files[name] = {"sha256": _sha256(path), "bytes": path.stat().st_size,
                                    "mode": f"{path.stat().st_mode & 0o777:o}"}
        data = json.dumps(manifest.to_json(), indent=2).encode()
        info = tarfile.TarInfo(MANIFEST)
        info.size, info.mode, info.mtime = len(data), 0o600, int(datetime.now(UTC).timestamp())
        tar.addfile(info, io.BytesIO(data))
        for name, path in entries:
            tar.add(path, arcname=name, recursive=False)
    partial.chmod(0o600)  # it holds every private key
    partial.replace(out)
    say(f"wrote {out} ({_size(out.stat().st_size)}, {len(manifest.files)} files)")
    return manifest


def restore(archive: Path, layout: StateLayout, *, force: bool = False, say: Say = lambda _line: None) -> Manifest:
    """Restore a backup into the state dir: every file checked against the manifest first, keys mode 0600, the
    SQLite stores' rows counted again. Raises BackupRefused (the state dir is in use, not empty without `force`,
    or the file is missing) or BackupDamaged."""
    root = layout.root
    if not archive.is_file():
        raise BackupRefused(f"no backup file at {archive}")
    if read_stack_info(root) is not None:
        raise BackupRefused(f"a stack is running in {root}: stop it before restoring into it")
    if root.exists() and any(root.iterdir()) and not force:
        raise BackupRefused(f"{root} is not empty: restore into a new state dir, or pass --force to replace what the "
                            "backup holds there (its JetStream store and stores included)")
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".caduceus-restore-", dir=root) as scratch:
        manifest = _unpack_checked(archive, Path(scratch))
        say(f"{archive}: {len(manifest.files)} files, all match the manifest (made {manifest.created_at})")
        for name, rows in manifest.sqlite_rows.items():
            found = table_rows(Path(scratch) / name)
            if found != rows:
                raise BackupDamaged(f"{name} in {archive} does not hold the rows the manifest lists")
        if any(name.startswith(f"{STREAM_DIR}/") for name in manifest.files):
            shutil.rmtree(root / STREAM_DIR, ignore_errors=True)  # never mix two stores' files
        for name in manifest.files:
            target = root / name
            target.parent.mkdir(parents=True, exist_ok=True)
            for suffix in ("-wal", "-shm"):  # a replaced SQLite file's old journal would be applied to it
                target.with_name(target.name + suffix).unlink(missing_ok=True)
            os.replace(Path(scratch) / name, target)
    for name in SECRET_DIRS:
        _secure_keys(root / name)
    if (root / "database.url").is_file():
        (root / "database.url").chmod(0o600)  # it may hold the database's password
    for name, rows in manifest.sqlite_rows.items():
        say(f"{name}: restored ({_describe_rows(rows)})")
    say(f"keys: {sum(1 for n in manifest.files if n.startswith('keys/'))} files, mode 0600")
    say(f"JetStream store: {manifest.stream}")
    for note in manifest.notes:
        say(f"note: {note}")
    return manifest


def table_rows(path: Path) -> dict[str, int]:
    """Rows per table of a SQLite file (read-only)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT "
                                               "LIKE 'sqlite_%' ORDER BY name")]
        return {table: db.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0] for table in tables}
    except sqlite3.DatabaseError as exc:
        raise BackupDamaged(f"{path.name} is not a readable SQLite database: {exc}") from exc
    finally:
        db.close()


def _sqlite_sources(layout: StateLayout, audit_db: str | None, manifest: Manifest) -> Iterator[tuple[str, Path]]:
    database = layout.database_url
    if database:
        shown = make_url(database).render_as_string(hide_password=True)
        manifest.notes.append(
            f"the audit, identity, web chat and MCP pin stores are in PostgreSQL ({shown}), not in this backup: dump "
            "that database with `pg_dump --format=custom --file caduceus.dump <database URL>` at the same time, "
            "restore it with `pg_restore --clean --dbname <database URL> caduceus.dump` (database.url, restored "
            "with the state dir, points the stack at it)")
    for name in SQLITE_STORES:
        if database and name in IN_DATABASE:
            continue
        source = layout.root / name
        if name == "audit.db" and audit_db:
            if audit_db.startswith("sqlite:///"):
                source = Path(audit_db.removeprefix("sqlite:///"))
            else:
                manifest.notes.append(
                    f"the audit store is {audit_db.split('://')[0]}, not in this backup: dump it with `pg_dump "
                    "--format=custom --file audit.dump <database URL>` at the same time, restore it with `pg_restore "
                    "--clean --dbname <database URL> audit.dump`, and point CADUCEUS_AUDIT_DB_URL at it")
                continue
        if source.is_file():
            yield name, source


def _sqlite_copy(source: Path, target: Path) -> None:
    """A consistent copy of a live SQLite database (its WAL included), whatever writes to it meanwhile."""
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=10.0)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()
    target.chmod(source.stat().st_mode & 0o777)  # identity.db is 0600: its copy and its restore stay so


def _files_below(root: Path, path: Path) -> list[tuple[str, Path]]:
    if path.is_file():
        return [(path.relative_to(root).as_posix(), path)]
    return [(p.relative_to(root).as_posix(), p) for p in sorted(path.rglob("*")) if p.is_file()]


def _unpack_checked(archive: Path, into: Path) -> Manifest:
    """Every file of the archive written below `into`, each checked against the manifest; BackupDamaged if not."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            first = tar.next()
            if first is None or first.name != MANIFEST:
                raise BackupDamaged(f"{archive} is not a Caduceus backup: it does not start with {MANIFEST}")
            manifest = Manifest.from_json(json.loads(tar.extractfile(first).read()))  # type: ignore[union-attr]
            if manifest.format != FORMAT:
                raise BackupDamaged(f"{archive} is a {manifest.format} backup; this Caduceus reads {FORMAT}")
            seen = set()
            for member in tar:
                if member is first:
                    continue
                name = PurePosixPath(member.name)
                if not member.isfile() or name.is_absolute() or ".." in name.parts or member.name not in manifest.files:
                    raise BackupDamaged(f"{archive} holds {member.name!r}, which its manifest does not list")
                data = tar.extractfile(member).read()  # type: ignore[union-attr]
                if hashlib.sha256(data).hexdigest() != manifest.files[member.name]["sha256"]:
                    raise BackupDamaged(f"{member.name} in {archive} does not match its checksum: the file was "
                                        "altered or damaged")
                target = into / member.name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
                target.chmod(int(str(manifest.files[member.name]["mode"]), 8))
                seen.add(member.name)
    except (tarfile.TarError, EOFError, OSError, ValueError, KeyError, zlib.error) as exc:
        raise BackupDamaged(f"{archive} cannot be read as a Caduceus backup: {exc}") from exc
    if missing := sorted(set(manifest.files) - seen):
        raise BackupDamaged(f"{archive} lacks {len(missing)} files its manifest lists, e.g. {missing[0]}")
    return manifest


def _secure_keys(keys: Path) -> None:
    if not keys.is_dir():
        return
    for path in [keys, *keys.rglob("*")]:
        path.chmod(0o700 if path.is_dir() else 0o600)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _describe_rows(rows: dict[str, int]) -> str:
    return f"{len(rows)} tables, {sum(rows.values())} rows"


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


__all__ = ["BackupDamaged", "BackupRefused", "Manifest", "back_up", "restore", "table_rows"]
