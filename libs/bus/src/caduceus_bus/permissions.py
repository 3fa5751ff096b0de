"""The bus's permission file (infra/nats/permissions.yaml): roles, what each may publish and subscribe to.

Services get concrete allow lists; worker roles are templates over {tenant} and {workspace},
which nats-server fills from the tags of the worker's credential, so a worker credential can
reach only its own tenant's subjects.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from caduceus_bus.routes import RouteTable
from caduceus_contracts import subjects

WORKER_PARAMETERS = ("tenant", "workspace")
_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")
_ROLE_NAME = r"^[a-z][a-z0-9-]{0,31}$"
_SUBJECT = r"^[^\s]+$"


class PermissionsError(ValueError):
    """The permission file is missing or wrong; the message names the file and what to fix."""


class Grant(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()


class Role(Grant):
    uses: tuple[str, ...] = ()


class PermissionFile(BaseModel):
    """The parsed file; `service_grant` and `worker_template` give what a credential may do."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    stream: str = Field(pattern=r"^[A-Z][A-Z0-9_-]*$")
    grants: dict[str, Grant] = {}
    services: dict[str, Role]
    workers: dict[str, Role] = {}

    @model_validator(mode="after")
    def _consistent(self) -> "PermissionFile":
        for name in [*self.services, *self.workers]:
            if not re.match(_ROLE_NAME, name):
                raise ValueError(f"role {name!r} is not a valid name (lowercase letters, digits, '-')")
        overlap = set(self.services) & set(self.workers)
        if overlap:
            raise ValueError(f"{sorted(overlap)} are both a service and a worker role")
        for name, role in [*self.services.items(), *self.workers.items()]:
            unknown = set(role.uses) - set(self.grants)
            if unknown:
                raise ValueError(f"role {name!r} uses {sorted(unknown)}, which `grants` does not define")
        for name, role in self.services.items():
            for subject in [*role.publish, *role.subscribe]:
                if _PLACEHOLDER.search(subject):
                    raise ValueError(f"service {name!r}: {subject!r} has a placeholder; only workers have them")
        for name, role in self.workers.items():
            for subject in [*role.publish, *role.subscribe]:
                _check_worker_subject(name, subject)
        return self

    def role_grant(self, name: str) -> Grant:
        """A role's own subjects plus those of the grants it uses (still templated, for a worker)."""
        role = self.services.get(name) or self.workers.get(name)
        if role is None:
            raise PermissionsError(f"no role {name!r} in the bus permission file (roles: "
                                   f"{', '.join([*self.services, *self.workers])})")
        publish, subscribe = list(role.publish), list(role.subscribe)
        for used in role.uses:
            publish += self.grants[used].publish
            subscribe += self.grants[used].subscribe
        return Grant(publish=tuple(publish), subscribe=tuple(subscribe))

    def service_grant(self, name: str) -> Grant:
        """What a service credential may do, its own inbox included."""
        if name not in self.services:
            raise PermissionsError(f"{name!r} is not a service role in the bus permission file")
        grant = self.role_grant(name)
        return Grant(publish=grant.publish, subscribe=(*grant.subscribe, f"{service_inbox(name)}.>"))

    def worker_template(self, name: str) -> Grant:
        """A worker role as the template nats-server fills from the credential's tags, its inbox included."""
        if name not in self.workers:
            raise PermissionsError(f"{name!r} is not a worker role in the bus permission file")
        grant = self.role_grant(name)
        inbox = worker_inbox(name, "{tenant}", "{workspace}")
        return Grant(publish=tuple(_as_template(s) for s in grant.publish),
                     subscribe=tuple(_as_template(s) for s in (*grant.subscribe, f"{inbox}.>")))

    def worker_grant(self, name: str, tenant: str, workspace: str) -> Grant:
        """The concrete subjects a worker of tenant/workspace may use (for explaining and for tests)."""
        grant = self.worker_template(name)
        values = {"tenant": subjects.token(tenant), "workspace": subjects.token(workspace, "workspace")}

        def fill(subject: str) -> str:
            return re.sub(r"\{\{tag\((\w+)\)\}\}", lambda m: values[m.group(1)], subject)

        return Grant(publish=tuple(map(fill, grant.publish)), subscribe=tuple(map(fill, grant.subscribe)))

    def roles_publishing(self, subject: str) -> list[str]:
        """Every role (service or worker) whose credential may publish `subject`."""
        found = [name for name in self.services if any(covers(p, subject) for p in self.service_grant(name).publish)]
        for name in self.workers:
            grant = self.role_grant(name)
            if any(covers(_PLACEHOLDER.sub("*", p), subject) for p in grant.publish):
                found.append(name)
        return found


def service_inbox(name: str) -> str:
    return f"_INBOX.{name}"


def worker_inbox(role: str, tenant: str, workspace: str) -> str:
    return f"_INBOX.{role}.{tenant}.{workspace}"


def _as_template(subject: str) -> str:
    return _PLACEHOLDER.sub(lambda m: f"{{{{tag({m.group(1)})}}}}", subject)


def _check_worker_subject(role: str, subject: str) -> None:
    unknown = set(_PLACEHOLDER.findall(subject)) - set(WORKER_PARAMETERS)
    if unknown:
        raise ValueError(f"worker {role!r}: {subject!r} uses {sorted(unknown)}; only {{tenant}} and {{workspace}} "
                         "are filled in")
    if subject.startswith(f"{subjects.PREFIX}."):
        parts = subject.split(".")
        index = 3 if len(parts) > 2 and parts[2] == "error" else 4
        if len(parts) <= index or parts[index] != "{tenant}":
            raise ValueError(f"worker {role!r}: {subject!r} must name {{tenant}} in its tenant position, "
                             "so a worker stays inside its tenant")


def covers(pattern: str, subject: str) -> bool:
    """Whether a NATS subject pattern (with `*` and `>`) matches a subject (which may itself have wildcards)."""
    wanted, given = pattern.split("."), subject.split(".")
    for index, token in enumerate(wanted):
        if token == ">":
            return len(given) > index
        if index >= len(given):
            return False
        if token != "*" and token != given[index]:
            return False
        if token == "*" and given[index] == ">":
            return False
    return len(given) == len(wanted)


GENERATED_HEADER = """\
# Who may publish and subscribe to what on the Caduceus bus. GENERATED from the code: do not edit.
#
# Each service and worker role is derived from its route table (the `ROUTES` of its handlers module: what it
# subscribes to, the pull consumers it reads, what it publishes); the CLI's roles and the shared grants are
# declared in src/caduceus/bus_roles.py. Regenerate with `caduceus bus permissions --write`; a test fails
# when this file and the code disagree.
#
# The embedded stack (`caduceus up`) and `caduceus bus authority` turn it into nats-server's decentralized
# authorization (an operator, a CADUCEUS account and a signed credential per role). A connection without a
# credential is refused.
#
# services:  one credential per service (and for the CLI: `client`, `operator`), issued at start.
# workers:   one credential per worker process, minted by the broker when it starts the worker. Its
#            subjects are templates: {tenant} and {workspace} are filled from the worker's credential,
#            so a worker can only ever reach its own tenant's (and workspace's) subjects.
# uses:      named sets from `grants` a role also gets.
#
# Every role may also subscribe to its own inbox, `_INBOX.<role>.>` (a worker's is
# `_INBOX.<role>.<tenant>.<workspace>.>`), and answer a request it received (one reply).
"""


def permissions_from_tables(tables: Iterable[RouteTable], *, stream: str, grants: Mapping[str, Grant],
                            clients: Mapping[str, Role]) -> PermissionFile:
    """The permission file the route tables imply (tables of one role, e.g. the planner and its gateway, merge),
    plus roles that have no route table (the CLI's) and the shared grants they use."""
    publish: dict[tuple[str, bool], list[str]] = {}
    subscribe: dict[tuple[str, bool], list[str]] = {}
    uses: dict[tuple[str, bool], list[str]] = {}
    for table in tables:
        key = (table.role, table.worker)
        pub, sub = table.permission_grant(stream)
        publish.setdefault(key, []).extend(pub)
        subscribe.setdefault(key, []).extend(sub)
        uses.setdefault(key, []).extend(table.grants)
    roles = {key: Role(publish=tuple(dict.fromkeys(publish[key])), subscribe=tuple(dict.fromkeys(subscribe[key])),
                       uses=tuple(dict.fromkeys(uses[key]))) for key in publish}
    services = {role: grant for (role, worker), grant in roles.items() if not worker}
    workers = {role: grant for (role, worker), grant in roles.items() if worker}
    return PermissionFile(stream=stream, grants=dict(grants), services={**services, **clients}, workers=workers)


def render_permissions(permissions: PermissionFile) -> str:
    """The permission file as YAML, in a stable order, with the header saying where it comes from."""
    def role(grant: Grant | Role) -> dict:
        body: dict = {}
        if isinstance(grant, Role) and grant.uses:
            body["uses"] = list(grant.uses)
        if grant.publish:
            body["publish"] = list(grant.publish)
        if grant.subscribe:
            body["subscribe"] = list(grant.subscribe)
        return body

    document = {
        "stream": permissions.stream,
        "grants": {name: role(grant) for name, grant in permissions.grants.items()},
        "services": {name: role(grant) for name, grant in permissions.services.items()},
        "workers": {name: role(grant) for name, grant in permissions.workers.items()},
    }
    return GENERATED_HEADER + yaml.safe_dump(document, sort_keys=False, default_flow_style=False, width=120)


def shipped_permissions_path() -> Path:
    """infra/nats/permissions.yaml, as packaged with caduceus_bus."""
    with resources.as_file(resources.files("caduceus_bus") / "permissions.yaml") as path:
        return Path(path)


def load_permissions(path: Path | None = None) -> PermissionFile:
    """Read and check a permission file (the shipped one by default); PermissionsError says what to fix."""
    path = path or shipped_permissions_path()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PermissionsError(f"cannot read the bus permission file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise PermissionsError(f"the bus permission file {path} is not valid YAML: {exc}") from None
    try:
        return PermissionFile.model_validate(data)
    except ValidationError as exc:
        problems = [f"at {'.'.join(str(p) for p in error.get('loc', ())) or 'top level'}: {error.get('msg')}"
                    for error in exc.errors()]
        raise PermissionsError(f"the bus permission file {path} is invalid " + "; ".join(problems)) from None
