"""`caduceus deployment secrets --out DIR`: one directory per service with only that service's keys and credential."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from caduceus.commands.bus import PermissionsOption, rules_from, writing_keys_to
from caduceus.scripting import AsJson, print_json, require_readable

out = Console(soft_wrap=True, highlight=False)
err = Console(stderr=True, soft_wrap=True, highlight=False)
deployment_app = typer.Typer(help="Files a deployment (Kubernetes, Compose) needs from Caduceus.",
                             no_args_is_help=True)


@deployment_app.command("secrets")
def secrets(
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for the keys (DIR/authority, keep it private and "
                                                        "backed up) and one directory per service.")],
    permissions: PermissionsOption = None,
    as_json: AsJson = False,
) -> None:
    """Make every signing key and bus credential once, and lay out each service's Secret.

    DIR/<service>/ holds exactly that service's private key(s), the public keys it verifies with, and its bus
    credential (`bus.creds`); the broker's also holds `worker-signing.json`; DIR/nats/server.conf is
    nats-server's authorization. Existing keys in DIR/authority are kept, so running it again (after an
    upgrade) leaves credentials and signatures valid. infra/k8s/overlays/production makes one Secret of each.
    """
    from caduceus.deployment import write_service_secrets

    if permissions is not None:
        require_readable(permissions, "permission file", err)
    with writing_keys_to(out_dir):
        written = write_service_secrets(out_dir, rules_from(permissions))
    if as_json:
        print_json({"authority": str(out_dir / "authority"),
                    "services": {service: {"directory": str(directory),
                                           "files": sorted(p.name for p in directory.iterdir())}
                                 for service, directory in written.items()}})
        return
    for service, directory in written.items():
        out.print(f"  {service:<9} {escape(str(directory))}: {', '.join(sorted(p.name for p in directory.iterdir()))}")
    out.print(f"Keep {escape(str(out_dir / 'authority'))} private and backed up: it holds every key.")


def register(app: typer.Typer) -> None:
    app.add_typer(deployment_app, name="deployment")
