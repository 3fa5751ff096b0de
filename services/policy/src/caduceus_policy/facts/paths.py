"""Where a file path lands: normalized against the workspace, with `..`, symlink and absolute-path escapes.

Lexical resolution is pure. When the workspace exists on this host (the embedded stack,
or a policy replica that mounts the workspaces), `HostPaths` also follows symlinks the
way the kernel will, component by component, so `link/../../x` or a symlink planted in
the workspace that points at /etc cannot pass for a path inside it.
"""

from __future__ import annotations

import functools
import os
import posixpath
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Protocol

# Secret files by where they live, matched against the normalized path (case-insensitive).
_SECRET_PATH = re.compile(
    r"""(?ix)
    (?:^|/)\.ssh(?:/|$)                                   # ssh keys, agent sockets, authorized_keys
    | (?:^|/)id_(?:rsa|dsa|ecdsa|ed25519)(?:_sk)?$        # private keys wherever they were copied
    | (?:^|/)\.aws(?:/|$) | (?:^|/)\.gnupg(?:/|$)               # cloud credentials and keys, the whole directory
    | (?:^|/)\.config/gcloud(?:/|$) | (?:^|/)application_default_credentials\.json$
    | (?:^|/)\.azure(?:/|$) | (?:^|/)\.kube/config$ | (?:^|/)\.docker/config\.json$
    | (?:^|/)(?:\.netrc|_netrc|\.pgpass|\.git-credentials|\.npmrc|\.pypirc|\.vault-token)$
    | (?:^|/)\.config/gh/hosts\.ya?ml$ | (?:^|/)\.terraform\.d/credentials\.tfrc\.json$
    | (?:^|/)\.env(?!\.(?:example|sample|template|dist)$)[^/]*$   # .env, .env.production, .env~; not .env.example
    | \.(?:pem|key|p12|pfx|jks|keystore)$
    | ^/etc/(?:shadow|gshadow|sudoers(?:\.d)?)(?:/|$|-)
    | ^/proc/(?:\d+|self)/(?:environ|mem)$
    | ^/(?:var/)?run/secrets(?:/|$)
    | \.(?:creds|nk|seed)$ | (?:^|/)keys/nats(?:/|$)              # bus credentials and nkey seeds (state dir)
    | (?:^|/)keys/[^/]+\.key$ | (?:^|/)auth\.json$                # signing keys; a worker's provider credentials
    """
)


# Every alternative of _SECRET_PATH holds one of these (in lower case), or starts with one of the prefixes:
# an ASCII path with none of them cannot match, which most paths show without running the regex.
_SECRET_TOKENS = (".ssh", "id_", ".aws", ".gnupg", ".config/", "credentials.json", ".azure", ".kube/", ".docker/", "netrc",
                  ".pgpass", ".git-credentials", ".npmrc", ".pypirc", ".vault-token", ".terraform.d/", ".env", ".pem",
                  ".key", ".p12", ".pfx", ".jks", ".creds", ".nk", ".seed", "keys/nats", "auth.json")
_SECRET_PREFIXES = ("/etc/shadow", "/etc/gshadow", "/etc/sudoers", "/proc/", "/run/secrets", "/var/run/secrets")


# Candidate secret files, for deciding whether a glob can match one: absolute ones, and names relative to the
# directory a glob sits in (a glob in the workspace may match its .env or a key copied there).
_SECRET_EXAMPLES = ("/etc/shadow", "/etc/gshadow", "/etc/sudoers", "/proc/self/environ", "/proc/1/environ",
                    "/run/secrets/token", "/var/run/secrets/kubernetes.io/serviceaccount/token",
                    "/home/~/.ssh/id_rsa", "/home/~/.aws/credentials", "/root/.ssh/id_rsa", "/root/.aws/credentials")
_SECRET_NAMES = (".env", ".env.local", ".env.production", "id_rsa", "id_ed25519", "id_ecdsa", ".ssh/id_rsa",
                 ".ssh/id_ed25519", ".ssh/authorized_keys", ".aws/credentials", ".kube/config", ".netrc", ".pgpass",
                 ".git-credentials", ".npmrc", ".pypirc", ".docker/config.json", ".vault-token", "server.key",
                 "key.pem", "cert.p12", "worker.creds", "keys/policy.key", "keys/nats/operator.creds", "auth.json",
                 ".config/gcloud/credentials.db", ".config/gh/hosts.yml")
_GLOB_CHARS = frozenset("*?[")


def glob_may_match_secret(path: str) -> bool:
    """True when a glob (`*`, `?`, `[...]`) in `path` can match a secret file: `.e*`, `~/.ss?/*`, `/???/shadow`."""
    if not any(c in _GLOB_CHARS for c in path):
        return False
    pattern = _glob_regex(path)
    if any(pattern.match(example) for example in _SECRET_EXAMPLES):
        return True
    if not path.rsplit("/", 1)[-1].strip("*?"):
        return False  # `dir/*` is every file of a directory that is not itself a secret place (that is checked apart)
    literal = path
    for index, char in enumerate(path):
        if char in _GLOB_CHARS:
            literal = path[:index]
            break
    directory = literal.rsplit("/", 1)[0] + "/" if "/" in literal else ""
    return any(pattern.match(directory + name) or pattern.match(name) for name in _SECRET_NAMES)


@functools.lru_cache(maxsize=512)
def _glob_regex(glob: str) -> re.Pattern[str]:
    """A glob as bash matches file names: `*` and `?` stay within one path component; `[...]` is a class."""
    out, index = [], 0
    while index < len(glob):
        char = glob[index]
        if char in "*?[" and (index == 0 or glob[index - 1] == "/"):
            out.append(r"(?!\.)")  # a wildcard does not match a leading dot (bash without dotglob)
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[":
            end = glob.find("]", index + 2)
            if end < 0:
                out.append(re.escape(char))
            else:
                body = glob[index + 1:end]
                body = ("^" + body[1:] if body[:1] in "!^" else body).replace("\\", "\\\\").replace("[", "\\[")
                out.append("[" + body + "]")
                index = end
        else:
            out.append(re.escape(char))
        index += 1
    return re.compile("".join(out) + "$", re.IGNORECASE)


# Files that git or a shell run later: hooks, configuration that names commands (core.pager, aliases), rc files.
_RUNS_LATER = re.compile(r"(?:^|/)\.git/(?:hooks/|config$|info/attributes$)|(?:^|/)\.gitconfig$|"
                         r"(?:^|/)\.config/git/config$|(?:^|/)\.(?:bashrc|bash_profile|bash_login|bash_logout|"
                         r"profile|zshrc|zprofile|zshenv|zlogin|envrc|inputrc|gitattributes)$")


def runs_later(path: str) -> bool:
    """True when writing `path` leaves a command to run later (a git hook or config, a shell's rc file)."""
    return ("git" in path or "/." in path or path.startswith(".")) and bool(_RUNS_LATER.search(path))


def looks_secret(path: str) -> bool:
    """True when the path names a credential store: ssh keys, cloud credentials, .env files, /etc/shadow ..."""
    if path.isascii():  # non-ASCII letters may case-fold to ASCII ones (the Kelvin sign is a k): regex only
        lowered = path.lower()
        if not lowered.startswith(_SECRET_PREFIXES) and not any(token in lowered for token in _SECRET_TOKENS):
            return False
    return bool(_SECRET_PATH.search(path))


class PathResolver(Protocol):
    """Turns a path as the executor would see it into the real path it names (following symlinks)."""

    def real(self, path: PurePosixPath) -> PurePosixPath | None: ...


@dataclass(frozen=True)
class LexicalPaths:
    """No disk access: symlinks are not followed (audit replay, `caduceus policy eval`, other hosts)."""

    def real(self, path: PurePosixPath) -> PurePosixPath | None:
        return None


@dataclass(frozen=True)
class HostPaths:
    """Follows symlinks on this host, for a workspace root that exists here."""

    def real(self, path: PurePosixPath) -> PurePosixPath | None:
        return PurePosixPath(os.path.realpath(str(path)))


@dataclass(frozen=True)
class PathVerdict:
    """One path, resolved: where it lands and whether it leaves the workspace, and why."""

    raw: str
    resolved: str
    outside: bool
    via_symlink: bool
    secret: bool

    @property
    def contents(self) -> str:
        """What reading the file hands on, by name and kind, never by value: `contents of .env (a secret file)`."""
        return f"contents of {self.raw}{' (a secret file)' if self.secret else ''}"


@functools.lru_cache(maxsize=1024)
def _normalized_root(root: str) -> PurePosixPath:
    """A workspace root without `.`, `..` or doubled slashes (few roots, one per tenant workspace: remembered)."""
    return PurePosixPath(normalize(root))


# The executor's home as paths see it: `~` resolves under it, so `~/../../etc/shadow` is /etc/shadow.
HOME = "/home/~"
# /proc/<pid>/root and /proc/<pid>/cwd are the process's root and current directory: `/proc/self/root/etc/x` is /etc/x.
_PROC_ROOT = re.compile(r"^/proc/(?:self|thread-self|\d+)(?:/task/\d+)?/root(?=/|$)")
_PROC_CWD = re.compile(r"^/proc/(?:self|thread-self|\d+)(?:/task/\d+)?/cwd(?=/|$)")


def normalize(path: str, cwd: str | None = None) -> str:
    """A path as the kernel will walk it, without symlinks: `~` and `~user` under HOME, relative paths under
    `cwd`, `.`, `..`, repeated slashes (leading ones too: POSIX's `//` is `/` on Linux) and /proc/self/root
    removed, /proc/self/cwd replaced by `cwd`."""
    text = path
    if text.startswith("~"):
        user, _, rest = text[1:].partition("/")
        text = f"{HOME}/{rest}" if not user else f"/home/{user}/{rest}"
    if cwd is not None and not text.startswith("/"):
        text = f"{cwd}/{text}"
    for _ in range(8):  # /proc/self/root/proc/self/root/... unwinds a level at a time
        normalized = "/" + posixpath.normpath(text).lstrip("/") if text.startswith("/") else posixpath.normpath(text)
        stripped = _PROC_ROOT.sub("", normalized)
        if cwd is not None:
            stripped = _PROC_CWD.sub(cwd, stripped)
        if stripped == normalized:
            return normalized
        text = stripped or "/"
    return normalized


# Directories that hold secret files somewhere below them: a recursive read of one reads the secrets too.
_SECRET_PARENTS = frozenset({"/", "/etc", "/home", "/root", "/proc", "/run", "/var", "/var/run", HOME})


def holds_secrets(resolved: str) -> bool:
    """True when a recursive read of the directory `resolved` (normalized) reaches secret files: /, /etc, a home."""
    return resolved in _SECRET_PARENTS or resolved.startswith("/home/") and resolved.count("/") == 2


def shown_path(resolved: str) -> str:
    """A resolved path as people write it (`~/.ssh/id_rsa`, not HOME's placeholder)."""
    return "~" + resolved[len(HOME):] if resolved == HOME or resolved.startswith(HOME + "/") else resolved


@dataclass(frozen=True)
class Workspace:
    """The directory a call runs in, how to resolve paths in it, and the current directory of a command."""

    root: PurePosixPath
    resolver: PathResolver = LexicalPaths()

    @classmethod
    def at(cls, root: PurePosixPath | str, resolver: PathResolver | None = None) -> "Workspace":
        return cls(_normalized_root(str(root)), resolver or LexicalPaths())

    def contains(self, path: PurePosixPath) -> bool:
        return path == self.root or self.root in path.parents

    @functools.cached_property
    def _prefix(self) -> str | None:
        """`<root>/`, when a normalized path is inside the root exactly when it starts with it (absolute roots but
        `/` and `//`); None sends `_contains` to the path arithmetic of `contains`."""
        root = str(self.root)
        return None if not root.startswith("/") or root.startswith("//") or root == "/" else root + "/"

    def _contains(self, normalized: str) -> bool:
        """`contains` for a path already normalized (posixpath.normpath), on its text: no objects per check."""
        prefix = self._prefix
        if prefix is None or normalized.startswith("//"):
            return self.contains(PurePosixPath(normalized))
        return normalized.startswith(prefix) or normalized == prefix[:-1]

    def check(self, raw: object, cwd: PurePosixPath | None = None) -> PathVerdict:
        """Resolve `raw` (relative to `cwd`, default the root). Anything not a clean string counts as outside."""
        if not isinstance(raw, str) or "\x00" in raw:
            shown = raw if isinstance(raw, str) else repr(raw)
            return PathVerdict(shown, shown, outside=True, via_symlink=False, secret=False)
        text = raw.strip()
        base = str(cwd if cwd is not None else self.root)
        resolved = normalize(text, base)
        # The executor's home is not the workspace (HOME is outside any root); ~user is someone else's home.
        outside = not self._contains(resolved)
        via_symlink = False
        secret = looks_secret(resolved) or looks_secret(text) or glob_may_match_secret(resolved)
        if not outside and self._real_root is not None:
            # The kernel follows a symlink before applying the `..` after it: resolve the joined path as written.
            real = self._real(PurePosixPath(posixpath.join(base, text)))
            if real is not None and not self.contains(real):
                outside = via_symlink = True
                resolved = str(real)
            if real is not None and not secret:
                secret = looks_secret(str(real))  # a link in the workspace to its .env is the .env
        return PathVerdict(raw, shown_path(resolved), outside, via_symlink, secret)

    @functools.cached_property
    def _real_root(self) -> PurePosixPath | None:
        """Where the root really is, resolved once per call (every path of the call is resolved against it)."""
        return self.resolver.real(self.root)

    def _real(self, path: PurePosixPath) -> PurePosixPath | None:
        real_root = self._real_root
        if real_root is None:
            return None
        real = self.resolver.real(path)
        if real is None:
            return None
        # Express the real path relative to the root as the executor sees it.
        if real == real_root or real_root in real.parents:
            return self.root / real.relative_to(real_root)
        return real
