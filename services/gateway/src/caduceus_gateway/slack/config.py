"""`<state>/slack.yaml`: which Slack workspaces the gateway serves, each an installation mapped to one tenant.

Secrets are never written in the file: each is a reference, `env:NAME` (an environment variable) or
`file:PATH` (a file, relative to the state dir), read when the gateway starts. A broken file is refused as a
whole, every problem with its line number.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

SLACK_FORMAT = """\
workspaces:
  T0123ABCD:                       # the Slack team id (Slack: workspace settings, or auth.test)
    tenant: acme                   # the Caduceus tenant this installation belongs to
    mode: http                     # http (Events API) or socket (Socket Mode)
    bot_token: env:SLACK_ACME_BOT_TOKEN           # xoxb-...
    signing_secret: env:SLACK_ACME_SIGNING_SECRET # Basic Information > Signing Secret
    app_token: env:SLACK_ACME_APP_TOKEN           # xapp-..., Socket Mode only
    service_account_key: file:keys/slack-acme.key # `caduceus identity service-account create --platform slack`
    workspace: default             # optional: the Caduceus workspace turns run in
    approvals_channel: C0123ABCD   # optional: post approvals here instead of the approvers' DMs
    link_by_email: false           # optional: link a Slack user whose Slack email is a person's, without pairing"""

_TEAM = re.compile(r"^[TE][A-Z0-9]{2,31}$")
_TENANT = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_CHANNEL = re.compile(r"^[CGD][A-Z0-9]{2,31}$")
_REF = re.compile(r"^(env|file):(.+)$")
_FIELDS = {"tenant", "mode", "bot_token", "signing_secret", "app_token", "service_account_key", "workspace",
           "approvals_channel", "link_by_email"}


class SlackConfigError(ValueError):
    """slack.yaml cannot be used; the message lists every problem with its line and what to write instead."""


@dataclass(frozen=True)
class SecretRef:
    """Where a secret is: `env:NAME` or `file:PATH`. Its text is never the secret itself."""

    kind: Literal["env", "file"]
    where: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.where}"

    def read(self, base: Path, environ: Mapping[str, str]) -> str:
        if self.kind == "env":
            value = environ.get(self.where, "")
            if not value:
                raise SlackConfigError(f"the environment variable {self.where} is not set (or empty)")
            return value
        path = Path(self.where) if Path(self.where).is_absolute() else base / self.where
        try:
            value = path.read_text().strip()
        except OSError as exc:
            raise SlackConfigError(f"cannot read the secret file {path}: {exc.strerror}") from None
        if not value:
            raise SlackConfigError(f"the secret file {path} is empty")
        return value


@dataclass(frozen=True)
class SlackWorkspace:
    """One installation of the Slack app: a Slack team, its tenant, and the secrets to speak as the bot there."""

    team_id: str
    tenant: str
    mode: Literal["http", "socket"]
    bot_token: str
    signing_secret: str
    service_account_key: str
    app_token: str | None = None
    workspace: str = "default"
    approvals_channel: str | None = None
    link_by_email: bool = False

    def __repr__(self) -> str:  # secrets stay out of logs and tracebacks
        return f"SlackWorkspace(team_id={self.team_id!r}, tenant={self.tenant!r}, mode={self.mode!r})"


@dataclass(frozen=True)
class SlackConfig:
    workspaces: Mapping[str, SlackWorkspace]

    def for_team(self, team_id: str | None) -> SlackWorkspace | None:
        return self.workspaces.get(team_id or "")

    def tenants(self) -> set[str]:
        return {w.tenant for w in self.workspaces.values()}


def load_slack_config(path: Path, environ: Mapping[str, str] | None = None) -> SlackConfig:
    """Read and check slack.yaml, resolving its secret references (relative files against its directory)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise SlackConfigError(f"cannot read {path}: {exc.strerror}; write it like this:\n{SLACK_FORMAT}") from None
    return parse_slack_config(text, str(path), path.parent, os.environ if environ is None else environ)


def parse_slack_config(text: str, source: str, base: Path, environ: Mapping[str, str]) -> SlackConfig:
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise SlackConfigError(f"{source} is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    problems: list[tuple[int, str]] = []
    top = _mapping_entries(root)
    if top is None or "workspaces" not in top:
        raise SlackConfigError(f"{source} needs a `workspaces:` mapping at the top, like this:\n{SLACK_FORMAT}")
    line, node = top["workspaces"]
    entries = _mapping_entries(node)
    if entries is None:
        raise SlackConfigError(f"{source} line {line}: `workspaces` must map Slack team ids to installations")
    workspaces: dict[str, SlackWorkspace] = {}
    for team, (line, node) in entries.items():
        found = _workspace(team, line, node, base, environ, problems)
        if found is not None:
            workspaces[team] = found
    if problems:
        listed = "\n".join(f"  line {line}: {message}" for line, message in sorted(problems))
        raise SlackConfigError(f"{source} has {len(problems)} problem(s):\n{listed}\nthe expected shape is:\n"
                               f"{SLACK_FORMAT}")
    return SlackConfig(workspaces)


def _mapping_entries(node: yaml.Node | None) -> dict[str, tuple[int, yaml.Node]] | None:
    if not isinstance(node, yaml.MappingNode):
        return None
    return {str(key.value): (key.start_mark.line + 1, value) for key, value in node.value}


def _workspace(team: str, line: int, node: yaml.Node, base: Path, environ: Mapping[str, str],
               problems: list[tuple[int, str]]) -> SlackWorkspace | None:
    before = len(problems)
    if not _TEAM.match(team):
        problems.append((line, f"{team!r} is not a Slack team id (like T0123ABCD)"))
    fields = _mapping_entries(node)
    if fields is None:
        problems.append((line, f"workspace {team}: expected a mapping with tenant, bot_token, signing_secret, ..."))
        return None
    for name, (at, _) in fields.items():
        if name not in _FIELDS:
            problems.append((at, f"workspace {team}: unknown field {name!r} (known: {', '.join(sorted(_FIELDS))})"))

    def plain(name: str, pattern: re.Pattern | None = None, required: bool = True) -> str | None:
        if name not in fields:
            if required:
                problems.append((line, f"workspace {team}: `{name}` is missing"))
            return None
        at, value = fields[name]
        text = value.value if isinstance(value, yaml.ScalarNode) else None
        if not isinstance(text, str) or not text or (pattern is not None and not pattern.match(text)):
            problems.append((at, f"workspace {team}: `{name}` has an invalid value {text!r}"))
            return None
        return text

    def secret(name: str, required: bool = True) -> str | None:
        text = plain(name, required=required)
        if text is None:
            return None
        at = fields[name][0]
        match = _REF.match(text)
        if match is None:
            problems.append((at, f"workspace {team}: `{name}` must be a secret reference, env:NAME or file:PATH, "
                                 "never the secret itself"))
            return None
        try:
            return SecretRef(match.group(1), match.group(2)).read(base, environ)  # type: ignore[arg-type]
        except SlackConfigError as exc:
            problems.append((at, f"workspace {team}: `{name}`: {exc}"))
            return None

    tenant = plain("tenant", _TENANT)
    mode = plain("mode", re.compile(r"^(http|socket)$"), required=False) or "http"
    bot_token, signing_secret = secret("bot_token"), secret("signing_secret")
    key = secret("service_account_key")
    app_token = secret("app_token", required=(mode == "socket"))
    workspace = plain("workspace", _TENANT, required=False) or "default"
    channel = plain("approvals_channel", _CHANNEL, required=False)
    by_email = plain("link_by_email", re.compile(r"^(true|false)$"), required=False) == "true"
    if len(problems) > before:
        return None
    assert tenant and bot_token and signing_secret and key
    return SlackWorkspace(team_id=team, tenant=tenant, mode=mode, bot_token=bot_token,  # type: ignore[arg-type]
                          signing_secret=signing_secret, service_account_key=key, app_token=app_token,
                          workspace=workspace, approvals_channel=channel, link_by_email=by_email)
