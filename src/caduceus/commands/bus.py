"""`caduceus bus authority --out DIR`: the locked-down bus for a deployment, from the one permission file.

The embedded stack writes the same files into its state dir at every start; a deployment (docker-compose,
Kubernetes) runs this once, mounts the directory, and points nats-server and each service at it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from caduceus_bus import BusAuthority, CredentialError, PermissionsError, load_permissions
from caduceus_bus.authority import WORKER_SIGNING_FILE

out = Console(soft_wrap=True, highlight=False)
err = Console(stderr=True, soft_wrap=True, highlight=False)
bus_app = typer.Typer(help="The bus's authorization: who may publish and subscribe to what (infra/nats).",
                      no_args_is_help=True)


@bus_app.command("authority")
def authority(
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for the keys and credentials (made mode 0700; "
                                                        "existing keys are kept, so credentials stay valid).")],
    permissions: Annotated[Path | None, typer.Option(help="The permission file (default: the shipped "
                                                          "infra/nats/permissions.yaml).")] = None,
) -> None:
    """Write nats-server's authorization and one credential per service from the permission file.

    Writes DIR/server.conf (include it from your nats.conf), DIR/<role>.creds for every service role
    (give each service only its own, as CADUCEUS_NATS_CREDENTIALS) and DIR/worker-signing.json (the broker's
    CADUCEUS_NATS_WORKER_SIGNING: it mints each worker's credential, confined to its tenant). Run it again after
    editing the permission file, then reload nats-server and restart the services.
    """
    try:
        rules = load_permissions(permissions)
        bus = BusAuthority(out_dir, rules)
        config = bus.write_all()
    except (PermissionsError, CredentialError) as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    except OSError as exc:
        err.print(f"[red]error:[/red] cannot write to {escape(str(out_dir))}: {escape(exc.strerror or str(exc))}")
        raise typer.Exit(2) from None
    out.print(f"nats-server authorization: {escape(str(config))}  (in nats.conf: include {config.name})")
    for role in rules.services:
        out.print(f"  {role:<9} {escape(str(out_dir / f'{role}.creds'))}")
    out.print(f"  broker's worker signing keys: {escape(str(out_dir / WORKER_SIGNING_FILE))}")
    out.print("Keep the directory private: each .creds file is a service's identity on the bus.")


def register(app: typer.Typer) -> None:
    app.add_typer(bus_app, name="bus")
