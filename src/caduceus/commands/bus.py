"""`caduceus bus permissions` and `caduceus bus authority --out DIR`: the locked-down bus, from the code.

`permissions` renders what every service and worker may publish and subscribe to, derived from their route
tables (infra/nats/permissions.yaml is its committed output). `authority` turns it into credentials.

The embedded stack writes the same files into its state dir at every start; a deployment (docker-compose,
Kubernetes) runs this once, mounts the directory, and points nats-server and each service at it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from caduceus.bus_roles import permission_file
from caduceus.scripting import BAD, USAGE, AsJson, print_json, require_readable
from caduceus_bus import (
    WORKER_SIGNING_FILE,
    BusAuthority,
    CredentialError,
    PermissionFile,
    PermissionsError,
    load_permissions,
    render_permissions,
)

out = Console(soft_wrap=True, highlight=False)
err = Console(stderr=True, soft_wrap=True, highlight=False)
bus_app = typer.Typer(help="The bus's authorization: who may publish and subscribe to what (infra/nats).",
                      no_args_is_help=True)


# A deployment's own permission file instead of the one the code implies.
PermissionsOption = Annotated[Path | None, typer.Option(help="A permission file to use instead of the one the code "
                                                             "implies (`caduceus bus permissions`).")]


def rules_from(permissions: Path | None) -> PermissionFile:
    return load_permissions(permissions) if permissions else permission_file()


@contextmanager
def writing_keys_to(out_dir: Path) -> Iterator[None]:
    """Turn a bad permission file (exit 1), an unreadable key or an unwritable directory (exit 2) into its message."""
    try:
        yield
    except PermissionsError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(BAD) from None
    except CredentialError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(USAGE) from None
    except OSError as exc:
        err.print(f"[red]error:[/red] cannot write to {escape(str(out_dir))}: {escape(exc.strerror or str(exc))}")
        raise typer.Exit(USAGE) from None


@bus_app.command("authority")
def authority(
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for the keys and credentials (made mode 0700; "
                                                        "existing keys are kept, so credentials stay valid).")],
    permissions: PermissionsOption = None,
    as_json: AsJson = False,
) -> None:
    """Write nats-server's authorization and one credential per service from the permission file.

    Writes DIR/server.conf (include it from your nats.conf), DIR/<role>.creds for every service role
    (give each service only its own, as CADUCEUS_NATS_CREDENTIALS) and DIR/worker-signing.json (the broker's
    CADUCEUS_NATS_WORKER_SIGNING: it mints each worker's credential, confined to its tenant). Run it again after
    editing the permission file, then reload nats-server and restart the services.
    """
    if permissions is not None:
        require_readable(permissions, "permission file", err)
    with writing_keys_to(out_dir):
        rules = rules_from(permissions)
        config = BusAuthority(out_dir, rules).write_all()
    if as_json:
        print_json({"server_conf": str(config), "credentials": {role: str(out_dir / f"{role}.creds")
                                                                 for role in rules.services},
                    "worker_signing": str(out_dir / WORKER_SIGNING_FILE)})
        return
    out.print(f"nats-server authorization: {escape(str(config))}  (in nats.conf: include {config.name})")
    for role in rules.services:
        out.print(f"  {role:<9} {escape(str(out_dir / f'{role}.creds'))}")
    out.print(f"  broker's worker signing keys: {escape(str(out_dir / WORKER_SIGNING_FILE))}")
    out.print("Keep the directory private: each .creds file is a service's identity on the bus.")


@bus_app.command("permissions")
def permissions_command(
    write: Annotated[list[Path] | None, typer.Option("--write", help="Write the file here (repeatable), e.g. "
                                                     "infra/nats/permissions.yaml.")] = None,
    check: Annotated[list[Path] | None, typer.Option("--check", help="Exit 1 if this file (repeatable) differs "
                                                     "from what the code implies.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the roles as one JSON document instead of YAML.")]
    = False,
) -> None:
    """Print who may publish and subscribe to what, as the route tables of every service and worker imply.

    Every subscription, pull consumer and published subject of a service is declared in its route table
    (`ROUTES` in its handlers module); this renders them as the bus's permission file. With --check it
    compares instead (for CI: exit 1 and the differing roles when a file is stale); with --write it updates.
    """
    rules = permission_file()
    text = render_permissions(rules)
    if check:
        stale = [path for path in check if not path.exists() or path.read_text(encoding="utf-8") != text]
        for path in stale:
            err.print(f"{escape(str(path))} differs from the code: run `caduceus bus permissions --write "
                      f"{escape(str(path))}`")
        raise typer.Exit(BAD if stale else 0)
    for path in write or []:
        try:
            path.write_text(text, encoding="utf-8")
        except OSError as exc:
            err.print(f"[red]error:[/red] cannot write {escape(str(path))}: {escape(exc.strerror or str(exc))}")
            raise typer.Exit(USAGE) from None
        err.print(f"wrote {escape(str(path))}")
    if write:
        return
    if as_json:
        print_json(rules.model_dump(mode="json"))
    else:
        print(text, end="")


def register(app: typer.Typer) -> None:
    app.add_typer(bus_app, name="bus")
