"""The programs the command reader models, and the options through which they run other code.

Known-good, not known-bad: a command is understood only when every program it runs is
listed here and none of its arguments asks it to run something the reader does not see
(awk's `system()`, sed's `e`, `git -c core.pager=...`, `tar --checkpoint-action=exec=...`).
`unmodelled(name, args)` says why a program's run is not understood, or None when it is.
What a modelled program does to paths, the network, files and privileges is computed by
shell.py; this module only decides whether reading it can be trusted at all.
"""

from __future__ import annotations

import re

# Read, inspect, transform text: output goes to stdout (and redirections, which shell.py reads).
_INSPECTORS = frozenset("""
ls cat head tail wc grep egrep fgrep rg ag ack diff diff3 cmp comm file stat du df pwd echo printf true false test [
[[ which type whereis basename dirname realpath readlink sort uniq cut tr paste column nl od hexdump xxd md5sum
sha1sum sha224sum sha256sum sha384sum sha512sum cksum b2sum sum date cal whoami id groups uname hostname printenv tree
jq yq seq sleep tac rev fold fmt expand unexpand join split csplit strings nproc free uptime ps pgrep lsof ss netstat
base32 base64 basenc iconv locale tty arch getconf logname users who w vmstat iostat envsubst numfmt factor shuf
yes expr bc dc awk gawk mawk nawk sed gsed find lscpu lsblk lsmod mountpoint pathchk tput clear reset stty dos2unix
unix2dos cloc tokei
""".split())
# Create, copy, move, remove files and archives (their paths are read by shell.py).
_FILE_TOOLS = frozenset("""
mkdir touch cp mv ln rm rmdir chmod chown chgrp tee install mktemp unlink truncate shred tar zip unzip gzip gunzip
zcat bzip2 bunzip2 bzcat xz unxz xzcat zstd unzstd zstdcat lz4 7z 7za patch rsync dd sync
""".split())
# Build, test and package tools: they run the workspace's own build and test code, which is what they are for.
_BUILD_TOOLS = frozenset("""
make gmake cmake ctest ninja meson bazel bazelisk gcc g++ cc c++ clang clang++ ld ar go gofmt cargo rustc rustup
rustfmt javac java mvn gradle gradlew mvnw dotnet npm yarn pnpm node nodejs tsc deno bun pip pip3 pipx pytest tox
nox uv poetry pipenv ruff black mypy flake8 pylint isort pyright pre-commit coverage twine hatch pdm bundle bundler
gem rake rspec composer phpunit jest vitest eslint prettier mocha webpack vite esbuild rollup swift swiftc kotlinc
scalac sbt stack cabal ghc mix elixir erl rebar3 luarocks conda mamba micromamba virtualenv python python3 ruby perl
php lua sh bash dash zsh ksh pylint autoreconf autoconf automake configure pkg-config protoc buf sqlite3
""".split())
# Version control, containers, clusters, infrastructure, network clients, package managers of the system.
_OTHER_TOOLS = frozenset("""
git gh svn hg docker podman docker-compose kubectl helm terraform tofu aws gcloud gsutil az curl wget ssh scp sftp
ping ping6 dig nslookup host traceroute nc ncat netcat telnet openssl apt apt-get apt-cache dpkg yum dnf apk brew
systemctl journalctl kill killall pkill psql mysql redis-cli mongosh crontab dmesg lsb_release ip ifconfig
""".split())
# Shell builtins with nothing left to run later.
_BUILTINS = frozenset("""
cd pushd popd export unset set shift exit return wait read local declare typeset readonly : source . umask ulimit
hash getopts printf echo test true false times jobs fg bg disown let shopt
""".split())
MODELLED = _INSPECTORS | _FILE_TOOLS | _BUILD_TOOLS | _OTHER_TOOLS | _BUILTINS
# Programs that run code found in the workspace (a Makefile, package.json scripts, tests, a script given to them).
RUNS_WORKSPACE_CODE = _BUILD_TOOLS - {"pip", "pip3", "pipx", "rustup", "gofmt", "rustfmt", "conda", "mamba",
                                      "micromamba", "virtualenv", "pkg-config", "protoc", "buf", "sqlite3"}

# Shell features that keep a command to run later or under another name: never understood.
LATER = {"trap": "trap runs a command later, on a signal or on exit", "alias": "alias defines a command name",
         "function": "a shell function defines a command name", "complete": "complete -C runs a command later",
         "bind": "bind -x runs a command on a key", "enable": "enable -f loads a builtin from a file",
         "coproc": "coproc runs a command in the background", "at": "at runs a command later",
         "batch": "batch runs a command later", "systemd-run": "systemd-run runs a command as a service"}
# Variables through which the shell or a program runs a command it takes from their value.
EXEC_VARIABLES = frozenset({
    "PAGER", "GIT_PAGER", "MANPAGER", "EDITOR", "VISUAL", "GIT_EDITOR", "GIT_SEQUENCE_EDITOR", "GIT_SSH",
    "GIT_SSH_COMMAND", "GIT_EXTERNAL_DIFF", "GIT_ASKPASS", "SSH_ASKPASS", "SUDO_ASKPASS", "BASH_ENV", "ENV",
    "PROMPT_COMMAND", "PERL5OPT", "RUBYOPT", "NODE_OPTIONS", "LESSOPEN", "LESSCLOSE", "GIT_EXEC_PATH",
    "GIT_CONFIG_PARAMETERS", "GIT_CONFIG_GLOBAL", "GIT_CONFIG_SYSTEM", "GIT_TEMPLATE_DIR", "PYTHONSTARTUP",
    "PYTHONWARNINGS", "PS4", "SHELLOPTS", "BASHOPTS", "IFS", "PATH", "LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT",
    "GCONV_PATH", "MAKEFLAGS", "MAKE", "SHELL", "CC", "CXX", "TAR_OPTIONS", "ZIPOPT", "BROWSER", "GIT_PROXY_COMMAND",
})
# Families of variables that configure what a tool runs: git's (GIT_CONFIG_COUNT/KEY_n/VALUE_n injects any
# configuration, GIT_DIR another repository), cargo's runners and rustc wrappers, npm's configuration.
_EXEC_VARIABLE_FAMILIES = re.compile(r"^(?:GIT_(?!(?:AUTHOR|COMMITTER)_(?:NAME|EMAIL|DATE)$|TERMINAL_PROMPT$)\w+|"
                                     r"CARGO_TARGET_\w+_RUNNER|CARGO_BUILD_RUSTC\w*|RUSTC\w*|CARGO_HOME|"
                                     r"(?i:npm_config_)\w+|YARN_\w+|PIP_\w+)$")


def runs_commands_through(variable: str) -> bool:
    """True when setting `variable` can make a program run another command or code from elsewhere."""
    return variable in EXEC_VARIABLES or bool(_EXEC_VARIABLE_FAMILIES.match(variable))


# Where programs live: a copy or link of one of them under another name is a renamed program.
SYSTEM_PROGRAM_DIRS = re.compile(r"^/(?:usr/(?:local/)?)?s?bin/|^/(?:usr/)?lib(?:exec|32|64)?/|^/opt/[^/]+/bin/")

# git configuration keys that never run anything; every other `-c key=` or `git config key value` is held.
_GIT_SAFE_KEYS = re.compile(r"(?i)^(?:user\.(?:name|email)|color\..*|init\.defaultbranch|advice\..*|core\.quotepath|"
                            r"core\.autocrlf|core\.filemode|core\.ignorecase|pull\.rebase|pull\.ff|push\.default|"
                            r"fetch\.prune|log\..*|format\.pretty|diff\.(?:renames|algorithm|colormoved)|merge\.ff|"
                            r"commit\.gpgsign|tag\.gpgsign|safe\.directory|http\.sslverify|branch\.autosetuprebase|"
                            r"rebase\.autosquash|status\.\w+|column\.ui|help\.autocorrect|gc\.auto|"
                            r"protocol\.version)$")
_GIT_SUBCOMMANDS = frozenset("""
status diff log show add commit branch checkout switch restore merge rebase fetch pull push clone stash tag remote
rev-parse ls-files ls-tree blame grep describe init config reset clean cherry-pick revert mv rm shortlog reflog
cat-file rev-list show-ref symbolic-ref worktree am apply format-patch range-diff notes gc fsck count-objects
version help archive bundle cherry name-rev merge-base for-each-ref verify-commit whatchanged sparse-checkout lfs
submodule bisect
""".split())
_GIT_VALUED = frozenset({"-C", "-c", "--git-dir", "--work-tree", "--namespace", "--config-env", "--exec-path"})
_NPM_RUNS_PACKAGES = frozenset({"exec", "x", "dlx", "create", "init"})  # fetch a package and run it
_PYTHON_MODULES = frozenset({"pytest", "pip", "venv", "unittest", "json.tool", "build", "mypy", "black", "ruff",
                             "isort", "flake8", "pylint", "coverage", "tox", "twine", "timeit", "compileall",
                             "py_compile", "doctest", "pyflakes", "pydoc", "site", "ensurepip", "nox", "hatch",
                             "uv", "poetry", "pre_commit", "pytest_benchmark", "cProfile", "tabnanny", "zipfile",
                             "tarfile", "gzip", "base64", "calendar", "platform", "sysconfig", "pycodestyle"})
_SED_EXEC = re.compile(r"(?:^|[;\n{}]|[0-9$/!]\s*)\s*[eWwRr](?:\s|$)|s(.).*?\1.*?\1[gpIiMm0-9]*[ew]")
_AWK_EXEC = re.compile(r"system\s*\(|\|\s*(?:getline|\")|\"[^\"]*\"\s*\|(?!\|)|\|&|print[f]?\b[^;}]*?>|ENVIRON|"
                       r"close\s*\(|fflush\s*\(\s*\"")
_TAR_EXEC = ("--checkpoint-action", "--to-command", "--use-compress-program", "--info-script", "--new-volume-script",
             "--rsh-command", "--rmt-command", "-I", "-F")
_SSH_EXEC = re.compile(r"(?i)(?:proxycommand|localcommand|permitlocalcommand|knownhostscommand|"
                       r"proxyusefdpass|match\s+exec)")


def unmodelled(name: str, args: list[str | None]) -> str | None:
    """Why running `name` with `args` is not understood (unknown program, or an option that runs code), or None."""
    if name in LATER:
        return LATER[name]
    if name not in MODELLED:
        return f"`{name}` is not a program policy models"
    texts = [a for a in args if a is not None]
    check = _CHECKS.get(name)
    return check(texts) if check is not None else None


def _git(args: list[str]) -> str | None:
    index = 0
    while index < len(args):
        arg = args[index]
        if arg in ("-c", "--config-env") and index + 1 < len(args):
            if arg == "--config-env" or not _GIT_SAFE_KEYS.match(args[index + 1].split("=", 1)[0]):
                return f"git {arg} {args[index + 1][:40]} can make git run a command"
        elif arg.startswith(("--exec-path=", "--config-env=")):
            return f"git {arg.split('=')[0]} changes what git runs"
        if not arg.startswith("-"):
            break
        index += 2 if arg in _GIT_VALUED else 1
    if index >= len(args):
        return None
    sub, rest = args[index], args[index + 1:]
    if any(a.startswith(("ext::", "fd::")) or "::" in a.split("/", 1)[0] for a in rest):
        return "a git remote helper URL (ext::) runs a command"
    if sub not in _GIT_SUBCOMMANDS:
        return f"git {sub} is not a git command policy models (it may be an alias that runs a command)"
    if any(a.startswith(("--upload-pack", "--receive-pack", "--exec=", "--extcmd", "--tool")) or
           a in ("--exec", "--upload-pack", "--receive-pack") or
           a == "-u" and sub in ("fetch", "clone", "pull", "ls-remote") or a == "-x" and sub == "rebase"
           for a in rest):
        return f"git {sub} is given a command to run"
    if sub == "config":
        operands = [a for a in rest if not a.startswith("-")]
        reading = any(a in ("--get", "--get-all", "--get-regexp", "-l", "--list", "--show-origin") for a in rest)
        if operands and not reading and (len(operands) > 1 or any(a in ("--add", "--replace-all", "--edit", "-e")
                                                                   for a in rest)):
            if not _GIT_SAFE_KEYS.match(operands[0]):
                return f"git config {operands[0]} can make git run a command later"
    if sub in ("submodule", "bisect") and any(a in ("foreach", "run") for a in rest):
        return f"git {sub} {'foreach' if 'foreach' in rest else 'run'} runs a command"
    if sub in ("clone", "init", "submodule") and any(
            a in ("-c", "--config", "--template", "--separate-git-dir", "-u", "--upload-pack") or
            a.startswith(("--config=", "--template=", "--separate-git-dir=")) for a in rest):
        return f"git {sub} is given configuration or templates (hooks) for the new repository"
    if sub == "grep" and any(a.startswith(("-O", "--open-files-in-pager")) for a in rest):
        return "git grep -O opens the files in a pager it is given"
    if sub in ("filter-branch",):
        return "git filter-branch runs commands"
    return None


def _sed(args: list[str]) -> str | None:
    scripts: list[str] = []
    index, positional = 0, []
    while index < len(args):
        arg = args[index]
        if arg in ("-e", "--expression") and index + 1 < len(args):
            scripts.append(args[index + 1])
            index += 2
            continue
        if arg.startswith("--expression="):
            scripts.append(arg.split("=", 1)[1])
        elif arg in ("-f", "--file") or arg.startswith("--file="):
            return "sed reads its script from a file"
        elif not arg.startswith("-"):
            positional.append(arg)
        index += 1
    if not scripts and positional:
        scripts.append(positional[0])
    for script in scripts:
        if _SED_EXEC.search(script):
            return "the sed script runs a command or writes or reads files (e, w, r)"
    return None


def _awk(args: list[str]) -> str | None:
    program = None
    index = 0
    while index < len(args):
        arg = args[index]
        if arg in ("-f", "--file") or arg.startswith("--file="):
            return "awk reads its program from a file"
        if arg in ("-v", "-F", "--assign", "--field-separator"):
            index += 2
            continue
        if not arg.startswith("-"):
            program = arg
            break
        index += 1
    if program is not None and _AWK_EXEC.search(program):
        return "the awk program runs a command or writes files (system(), pipes, print >)"
    return None


def _tar(args: list[str]) -> str | None:
    for arg in args:
        if arg.startswith(_TAR_EXEC[:6]) or arg in ("-I", "-F") or (not arg.startswith("--") and len(arg) > 1 and
                                                                   arg[0] != "-" and "I" in arg and args[0] == arg):
            return f"tar {arg.split('=')[0]} runs a command"
    return None


def _zip(args: list[str]) -> str | None:
    if any(a in ("-TT", "--unzip-command") or a.startswith("--unzip-command=") for a in args):
        return "zip -TT runs a command"
    return None


def _find(args: list[str]) -> str | None:
    for arg in args:
        if arg in ("-exec", "-execdir", "-ok", "-okdir"):
            return f"find {arg} runs a command on every file found"
        if arg in ("-fprint", "-fprint0", "-fprintf", "-fls"):
            return f"find {arg} writes a file"
    return None


def _ssh(args: list[str]) -> str | None:
    if any(_SSH_EXEC.search(a) for a in args) or any(a in ("-F", "-S") or a.startswith("-F") for a in args):
        return "ssh is given a local command or configuration to run"
    return None


def _rsync(args: list[str]) -> str | None:
    if any(a in ("-e", "--rsh") or a.startswith(("--rsh=", "--rsync-path", "-e")) for a in args):
        return "rsync is given a command to run"
    return None


def _node_family(args: list[str]) -> str | None:
    for arg in args:
        if arg in ("-e", "-p", "--eval", "--print", "-r", "--require", "--import", "--loader") or \
                arg.startswith(("--eval=", "--require=", "--import=", "--loader=", "-pe")):
            return f"code given on the command line ({arg}) is not read"
        if not arg.startswith("-"):
            return None
    return None


def _inline(flags: tuple[str, ...]):  # type: ignore[no-untyped-def]
    def check(args: list[str]) -> str | None:
        for arg in args:
            if not arg.startswith("-"):
                return None
            cluster = arg[1:] if not arg.startswith("--") else ""
            if any(arg == flag or flag[1:] in cluster for flag in flags):  # -e, -pe, -lne: code follows
                return f"code given on the command line ({arg}) is not read"
        return None
    return check


def _python(args: list[str]) -> str | None:
    for index, arg in enumerate(args):
        if arg == "-m" or (arg.startswith("-m") and not arg.startswith("--")):
            module = arg[2:] or (args[index + 1] if index + 1 < len(args) else "")
            if module not in _PYTHON_MODULES:
                return f"python -m {module} runs a module policy does not model"
            return None
        if not arg.startswith("-") or arg.startswith("-c"):
            return None  # a script, or -c code (read as Python by code.py)
    return None


def _npm(args: list[str]) -> str | None:
    operands = [a for a in args if not a.startswith("-")]
    if operands[:1] and operands[0] in _NPM_RUNS_PACKAGES:
        return f"npm {operands[0]} fetches a package and runs it"
    if operands[:2] in (["config", "set"], ["config", "edit"], ["set", "script-shell"]) or operands[:1] == ["set"] \
            or any(a.startswith(("--script-shell", "--node-options", "--shell")) for a in args):
        return "npm configuration can change the shell and options its scripts run with"
    return None


def _cargo(args: list[str]) -> str | None:
    if any(a == "--config" or a.startswith("--config=") or a.startswith("-Z") for a in args):
        return "cargo --config can set the runner or compiler wrapper cargo runs"
    return None


def _uv(args: list[str]) -> str | None:
    operands = [a for a in args if not a.startswith("-")]
    if operands[:2] == ["tool", "run"] or operands[:1] == ["x"]:
        return "uv tool run fetches a package and runs it"
    return None


def _make(args: list[str]) -> str | None:
    if any(a in ("-E", "--eval") or a.startswith(("--eval=", "SHELL=", ".SHELLFLAGS=", "MAKESHELL=")) for a in args):
        return "make is given a shell or recipe on the command line"
    return None


def _docker(args: list[str]) -> str | None:
    operands = [a for a in args if not a.startswith("-")]
    if operands[:1] == ["compose"] and operands[1:2] and operands[1] not in _COMPOSE_READ:
        return f"docker compose {operands[1]} starts, changes or stops containers whose definition policy does not read"
    if operands[:2] in (["compose", "exec"], ["compose", "run"]) or operands[:1] == ["exec"]:
        return "docker exec runs a command in a container"
    if operands and operands[0] not in _DOCKER_READ:
        return f"docker {operands[0]} runs an image's code or changes containers, which policy does not read"
    return None


def _sqlite(args: list[str]) -> str | None:
    if any(re.search(r"(?m)^\s*\.(?:shell|system|output|once|load|import)\b", a) or a == "-cmd" for a in args):
        return "sqlite3 is given a dot-command that runs programs or touches files"
    return None


def _psql(args: list[str]) -> str | None:
    if any("\\!" in a or "\\o" in a or "\\copy" in a for a in args):
        return "psql is given a meta-command that runs programs or writes files"
    return None


def _declare(args: list[str]) -> str | None:
    if any(a.startswith("-") and "f" in a for a in args):
        return "exporting or declaring functions defines command names"
    return None


def _read_only_subcommands(program: str, allowed: frozenset[str], depth: int = 1):  # type: ignore[no-untyped-def]
    """A check for tools with a large surface (clusters, clouds, containers): only the listed read-only
    subcommands (the first `depth` operands, joined by a space) are modelled; anything else changes state the
    reader does not see, or runs code it does not read."""
    def check(args: list[str]) -> str | None:
        operands = [a for a in args if not a.startswith("-")][:depth]
        if not operands or " ".join(operands) in allowed or operands[0] in allowed:
            return None
        return f"{program} {' '.join(operands)} is not a {program} command policy models as read-only"
    return check


def _gh(args: list[str]) -> str | None:
    operands = [a for a in args if not a.startswith("-")]
    if operands[:1] == ["api"]:
        method = next((args[i + 1] for i, a in enumerate(args[:-1]) if a in ("-X", "--method")), "GET")
        if method.upper() != "GET" or any(a in ("-f", "-F", "--field", "--raw-field", "--input") for a in args):
            return "gh api with a method or fields other than a plain GET"
        return None
    return _read_only_subcommands("gh", _GH_READ, 2)(args)


def _aws(args: list[str]) -> str | None:
    operands = [a for a in args if not a.startswith("-")]
    if len(operands) >= 2 and (operands[1].startswith(("describe-", "list-", "get-")) or
                               operands[:2] in (["s3", "ls"], ["sts", "get-caller-identity"])):
        return None
    return f"aws {' '.join(operands[:2])} is not an aws command policy models as read-only"


def _gcloud_like(program: str, verbs: frozenset[str]):  # type: ignore[no-untyped-def]
    def check(args: list[str]) -> str | None:
        operands = [a for a in args if not a.startswith("-")]
        if operands and (operands[-1] in verbs or any(o in verbs for o in operands[1:3])):
            return None
        return f"{program} {' '.join(operands[:3])} is not a {program} command policy models as read-only"
    return check


def _nc(args: list[str]) -> str | None:
    if any(a in ("-e", "-c", "--exec", "--sh-exec", "--lua-exec", "-l", "--listen") or
           (a.startswith("-") and not a.startswith("--") and ("e" in a or "l" in a)) for a in args):
        return "nc runs a program on the connection or listens for connections"
    return None


_GH_READ = frozenset({"pr list", "pr view", "pr status", "pr diff", "pr checks", "issue list", "issue view",
                      "issue status", "repo view", "repo list", "repo clone", "run list", "run view", "run watch",
                      "release list", "release view", "auth status", "workflow list", "workflow view", "search",
                      "status", "browse", "pr checkout", "label list", "gist list", "gist view", "version"})
_DOCKER_READ = frozenset({"build", "ps", "images", "image ls", "logs", "inspect", "pull", "version", "info", "tag",
                          "compose", "history", "stats", "top", "port", "diff", "search", "login", "buildx"})
_COMPOSE_READ = frozenset({"ps", "logs", "config", "ls", "images", "version", "top", "build", "pull", "port"})
_KUBECTL_READ = frozenset({"get", "describe", "logs", "version", "config", "top", "explain", "api-resources",
                           "api-versions", "cluster-info", "rollout", "diff", "auth", "events", "wait"})
_HELM_READ = frozenset({"list", "ls", "status", "template", "lint", "version", "show", "search", "get", "history",
                        "dependency", "repo", "env", "verify", "package", "create"})
_TERRAFORM_READ = frozenset({"fmt", "validate", "plan", "init", "output", "show", "version", "providers", "graph",
                             "state list", "state show", "workspace list", "workspace show", "console", "get",
                             "test", "-version", "state"})


def _hash(args: list[str]) -> str | None:
    return "hash -p makes a command name run another program" if any(a.startswith("-") and "p" in a for a in args) \
        else None


def _curl(args: list[str]) -> str | None:
    if any(a in ("-K", "--config") or a.startswith("--config=") for a in args):
        return "curl reads options from a config file"
    return None


def _wget(args: list[str]) -> str | None:
    if any(a in ("-e", "--execute", "--use-askpass", "-i", "--input-file") or
           a.startswith(("--execute=", "--use-askpass=", "--input-file=")) for a in args):
        return "wget is given commands or a URL list to run"
    return None


def _crontab(args: list[str]) -> str | None:
    return None if any(a == "-l" for a in args) else "crontab installs commands to run later"


def _xargs_like(args: list[str]) -> str | None:
    return "it runs a command with arguments only known at run time"


_CHECKS = {
    "git": _git, "sed": _sed, "gsed": _sed, "awk": _awk, "gawk": _awk, "mawk": _awk, "nawk": _awk, "tar": _tar,
    "zip": _zip, "find": _find, "scp": _ssh, "sftp": _ssh, "rsync": _rsync,
    "node": _node_family, "nodejs": _node_family, "bun": _node_family, "deno": _inline(("eval",)),
    "perl": _inline(("-e", "-E", "-M", "-m", "-x")), "ruby": _inline(("-e", "-r", "-I")),
    "php": _inline(("-r", "-B", "-R", "-E", "-d")), "lua": _inline(("-e", "-l")),
    "python": _python, "python3": _python, "npm": _npm, "yarn": _npm, "pnpm": _npm, "uv": _uv, "make": _make,
    "gmake": _make, "docker": _docker, "podman": _docker, "sqlite3": _sqlite, "psql": _psql,
    "export": _declare, "declare": _declare, "typeset": _declare, "curl": _curl, "wget": _wget,
    "crontab": _crontab, "cargo": _cargo, "hash": _hash, "gh": _gh, "aws": _aws, "nc": _nc, "ncat": _nc, "netcat": _nc,
    "kubectl": _read_only_subcommands("kubectl", _KUBECTL_READ),
    "helm": _read_only_subcommands("helm", _HELM_READ),
    "terraform": _read_only_subcommands("terraform", _TERRAFORM_READ),
    "tofu": _read_only_subcommands("tofu", _TERRAFORM_READ),
    "gcloud": _gcloud_like("gcloud", frozenset({"list", "describe", "info", "version", "get-value"})),
    "az": _gcloud_like("az", frozenset({"list", "show", "version", "account"})),
    "gsutil": _read_only_subcommands("gsutil", frozenset({"ls", "stat", "du", "version", "cat"})),
    "ssh": lambda args: _ssh(args) or "ssh runs commands on another host",
}
