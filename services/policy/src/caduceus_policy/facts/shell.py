"""What a terminal command does: the binaries it runs, the paths it touches, network use, and red flags.

Works on the parsed line (shell_syntax): wrappers such as `sudo`, `env`, `timeout`, `xargs`
are looked through to the command they run; `sh -c`, `eval`, here-docs and piped stdin are
read as the scripts they are; small pure pipelines (`printf`/`echo` into `base64 -d`, `xxd -r`,
`rev`) are evaluated, so a command spelled by decoding is seen as the command it becomes.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import posixpath
import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from caduceus_policy.facts.code import RISKY_OPERATIONS, code_facts
from caduceus_policy.facts.paths import (
    PathVerdict,
    Workspace,
    glob_may_match_secret,
    holds_secrets,
    looks_secret,
    normalize,
)
from caduceus_policy.facts.programs import (
    LATER,
    MODELLED,
    RUNS_WORKSPACE_CODE,
    SYSTEM_PROGRAM_DIRS,
    runs_commands_through,
    unmodelled,
)
from caduceus_policy.facts.shell_syntax import Command, Script, Word, ansi_c, parse_script

SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "fish", "csh", "tcsh", "rbash"})
CODE_INTERPRETERS = {"perl": "-eE", "ruby": "-e", "node": "-e", "nodejs": "-e", "php": "-r", "lua": "-e",
                     "tclsh": "", "osascript": "-e", "Rscript": "-e", "deno": "", "bun": "-e", "pwsh": "-c",
                     "powershell": "-c"}
FETCHERS = frozenset({"curl", "wget", "nc", "ncat", "netcat", "socat", "aria2c", "http", "https", "xh", "fetch",
                      "lynx", "w3m", "links", "tftp", "ftp"})
NETWORK = FETCHERS | {"telnet", "ssh", "scp", "sftp", "rsync", "lftp", "dig", "nslookup", "host", "ping", "ping6",
                      "traceroute", "mosh", "ssh-keyscan", "nmap", "masscan", "openssl", "curlie", "axel", "torsocks",
                      "proxychains", "proxychains4", "whois", "ldapsearch", "smbclient", "mysql", "psql",
                      "redis-cli", "mongo", "mongosh"}
PRIVILEGE_WRAPPERS = frozenset({"sudo", "doas", "pkexec", "run0", "su", "chroot", "nsenter", "unshare", "capsh",
                                "runuser", "setpriv"})
PRIVILEGE_COMMANDS = frozenset({"setcap", "passwd", "chpasswd", "usermod", "useradd", "userdel", "groupadd",
                                "groupmod", "gpasswd", "adduser", "addgroup", "visudo", "newgrp", "sg", "mount",
                                "umount", "insmod", "rmmod", "modprobe", "iptables", "ip6tables", "nft", "chown",
                                "chgrp", "setfacl", "sysctl", "swapon", "losetup", "debugfs"})
ALWAYS_DESTRUCTIVE = frozenset({"shred", "wipefs", "fdisk", "sfdisk", "parted", "mkswap", "srm", "shutdown",
                                "reboot", "halt", "poweroff", "killall", "pkill", "dropdb", "truncate", "blkdiscard"})
# Wrapper commands: the command they run starts after their options (values of the listed options skipped)
# and after `positional` leading arguments.
_WRAPPERS: dict[str, tuple[frozenset[str], int]] = {
    "sudo": (frozenset({"-u", "-g", "-C", "-p", "-r", "-t", "-U", "-h", "-D", "-R", "-T", "--user", "--group",
                        "--prompt", "--role", "--type", "--other-user", "--host", "--chdir", "--chroot",
                        "--close-from", "--command-timeout"}), 0),
    "doas": (frozenset({"-u", "-C"}), 0), "pkexec": (frozenset({"--user"}), 0), "run0": (frozenset({"-u"}), 0),
    "runuser": (frozenset({"-u", "-g", "-G", "--user", "--group"}), 0), "setpriv": (frozenset(), 0),
    "nice": (frozenset({"-n", "--adjustment"}), 0), "ionice": (frozenset({"-c", "-n", "-t", "-p"}), 0),
    "nohup": (frozenset(), 0), "time": (frozenset({"-f", "-o", "--format", "--output"}), 0),
    "timeout": (frozenset({"-s", "-k", "--signal", "--kill-after"}), 1),
    "stdbuf": (frozenset({"-i", "-o", "-e"}), 0), "setsid": (frozenset(), 0), "command": (frozenset(), 0),
    "builtin": (frozenset(), 0), "exec": (frozenset({"-a"}), 0), "nsenter": (frozenset({"-t", "--target"}), 0),
    "xargs": (frozenset({"-I", "-i", "-n", "-P", "-d", "-E", "-L", "-s", "-a", "--arg-file", "--delimiter",
                         "--max-args", "--max-procs", "--replace"}), 0),
    "watch": (frozenset({"-n", "--interval", "-d"}), 0), "unbuffer": (frozenset(), 0),
    "strace": (frozenset({"-e", "-o", "-p", "-s", "-u"}), 0), "ltrace": (frozenset({"-e", "-o", "-p"}), 0),
    "chroot": (frozenset({"--userspec", "--groups"}), 1), "unshare": (frozenset(), 0), "capsh": (frozenset(), 0),
    "taskset": (frozenset(), 1), "chrt": (frozenset(), 1), "faketime": (frozenset(), 1),
    "flock": (frozenset({"-w", "-E", "--timeout"}), 1), "torsocks": (frozenset(), 0),
    "proxychains": (frozenset({"-f"}), 0), "proxychains4": (frozenset({"-f"}), 0), "firejail": (frozenset(), 0),
    "catchsegv": (frozenset(), 0), "busybox": (frozenset(), 0), "doas-keepenv": (frozenset(), 0),
}
_RESERVED = frozenset({"!", "{", "}", "then", "else", "elif", "fi", "do", "done", "while", "until", "if", "esac",
                       "coproc"})
# Wrappers that run their command with arguments or timing the reader cannot know.
_OPAQUE_WRAPPERS = frozenset({"xargs", "watch", "strace", "ltrace", "busybox", "firejail", "unbuffer", "flock",
                              "faketime", "capsh", "torsocks", "proxychains", "proxychains4", "catchsegv", "nsenter",
                              "unshare", "chroot", "setpriv", "doas-keepenv"})
# Variables the executor's environment gives a value the reader knows well enough (HOME as `~`, the rest opaque).
_WELL_KNOWN = {"HOME": "~", "USER": "user", "LOGNAME": "user", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
               "TERM": "xterm", "HOSTNAME": "host", "SHELL": "/bin/sh", "PATH": "/usr/bin:/bin"}
# Commands after which files the reader cannot name exist: archives unpacked, downloads under a remote name, code
# pulled from elsewhere. (Package managers and builds write into their own directories: the workspace's own code.)
_WRITES_UNNAMED = frozenset({"curl", "tar", "unzip", "7z", "7za", "wget", "git", "gunzip", "bunzip2", "unxz", "unzstd",
                             "rsync", "scp", "sftp", "patch"})
# Programs whose output carries the content of the files they read, and those that pass their input on.
_READS_FILES = frozenset({"cat", "head", "tail", "base64", "base32", "xxd", "od", "hexdump", "gzip", "bzip2", "xz",
                          "zstd", "tar", "zip", "strings", "sort", "uniq", "tac", "rev", "cut", "grep", "jq", "sed",
                          "awk", "openssl", "gpg", "nl", "fold", "cp", "dd"})
_PASSES_DATA = frozenset({"base64", "base32", "xxd", "od", "gzip", "bzip2", "xz", "zstd", "tr", "rev", "sed", "awk",
                          "sort", "uniq", "cut", "head", "tail", "cat", "tee", "openssl", "gpg", "jq", "grep", "tac"})
_INTERPRETERS = SHELLS | set(CODE_INTERPRETERS) | {"python", "python3", "node", "nodejs"}
# Variables that say where programs load code from: fine inside the workspace, not understood outside it.
_SEARCH_PATHS = frozenset({"PYTHONPATH", "PYTHONHOME", "NODE_PATH", "PERL5LIB", "PERLLIB", "RUBYLIB", "CLASSPATH",
                           "GOPATH", "GEM_PATH", "GEM_HOME", "LUA_PATH", "LUA_CPATH"})
# Options of build and test tools that name the project they run (and so whose code runs).
_PROJECT_OPTIONS = ("-C", "-f", "--file", "--makefile", "--directory", "--prefix", "--rootdir", "--manifest-path",
                    "-p", "--project", "--cwd", "--dir", "--chdir", "-c", "--config", "--config-file")
# curl and wget options whose next word is a value, not a URL.
_CURL_VALUED = frozenset({"-T", "--upload-file", "-d", "--data", "--data-binary", "--data-raw", "--data-ascii",
                          "--data-urlencode", "--json", "-F", "--form", "-o", "--output", "-O", "-H", "--header",
                          "-u", "--user", "-A", "--user-agent", "-e", "--referer", "-X", "--request", "-b",
                          "--cookie", "-c", "--cookie-jar", "-E", "--cert", "--key", "--cacert", "-w", "--write-out",
                          "-m", "--max-time", "--retry", "-r", "--range", "-z", "--output-document", "-P",
                          "--post-data", "--post-file", "--body-file", "-U", "--resolve",
                          "--connect-to", "-x", "--proxy", "--preproxy", "--socks5", "--socks5-hostname",
                          "--socks4", "--socks4a", "--limit-rate", "--connect-timeout", "-K", "--config"})
_BRACES = re.compile(r"\{[^{}]*(?:,|\.\.)[^{}]*\}")
_LOOP_HEADS = frozenset({"for", "select", "case"})
_HARMLESS_DEVICES = re.compile(r"^/dev/(?:null|zero|stdout|stderr|stdin|tty|u?random|fd/\d+)$")
_DEV_NET = re.compile(r"/dev/(tcp|udp)/([^/\s]+)/(\d+)")
_HOST_LIKE = re.compile(r"^(?:[\w.+-]+@)?(?:\[[0-9A-Fa-f:.%]+\]|[\w.%-]+)(?::[\w/.~-]*)?(?:/\S*)?$")
_ESCAPED = re.compile(r"\\(?:x[0-9A-Fa-f]{1,2}|[0-7]{1,3}|u[0-9A-Fa-f]{4})")
_SQL_DESTRUCTION = re.compile(r"(?i)\b(?:drop\s+(?:table|database|schema)|truncate\s+table|delete\s+from\s+\w+\s*;?\s*$)")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\+?=")  # `NAME=value` or `NAME+=value` before a command
_ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_WORD_ASSIGNMENT = re.compile(r"^[A-Za-z_]\w*=")
_WRITE_ALL = frozenset({"rm", "rmdir", "touch", "mkdir", "truncate", "shred", "chmod", "chown", "chgrp", "tee",
                        "unlink", "srm"})
_WRITE_LAST = frozenset({"cp", "mv", "install", "ln", "rsync", "scp"})
_SENSITIVE_WRITES = re.compile(r"^/etc/(?:sudoers|passwd|shadow|group|gshadow|cron|ld\.so\.preload|systemd|"
                               r"profile|bash\.bashrc)|^/root(?:/|$)|/\.ssh/authorized_keys$|^/usr/(?:local/)?s?bin/")



def _sensitive_write(verdict: PathVerdict) -> bool:
    """A write to a system file that grants privileges; the workspace itself never counts, wherever it lives
    (a state dir under /root included)."""
    return verdict.outside and bool(_SENSITIVE_WRITES.search(verdict.resolved))


@dataclass
class ShellFacts:
    """What one command line does, as far as reading it can tell."""

    binaries: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)
    dynamic_command: bool = False
    decode_and_execute: bool = False
    fetch_and_execute: bool = False
    network: bool = False
    destructive: bool = False
    privilege_raising: bool = False
    paths: list[PathVerdict] = field(default_factory=list)
    written: list[PathVerdict] = field(default_factory=list)
    urls: list[tuple[str, str]] = field(default_factory=list)  # (url or bare host, default scheme)
    inline_code: list[tuple[str, str]] = field(default_factory=list)  # (language, code) run with -c / -e
    evidence: dict[str, str] = field(default_factory=dict)
    # What the reader could not establish (unknown programs, options that run code, values known only at run
    # time, things left to run later): a command is understood only when this stays empty.
    unmodelled: list[str] = field(default_factory=list)
    # Data a network command sends: "contents of notes.txt", "contents of .env (a secret file)", "the environment".
    uploads: list[str] = field(default_factory=list)

    def flag(self, fact: str, evidence: str) -> None:
        setattr(self, fact, True)
        self.evidence.setdefault(fact, evidence[:120])

    def unknown(self, reason: str) -> None:
        if reason not in self.unmodelled:
            self.unmodelled.append(reason[:160])


@dataclass
class _Stage:
    """What a pipeline stage hands to the next one: its output when it is known, and what produced it."""

    output: str | None = None
    decoded: bool = False
    fetched: bool = False
    data: str = ""  # what the output carries, when it is more than text: "contents of .env (a secret file)"


def analyze_command(command: str, workspace: Workspace, workdir: object = None) -> ShellFacts:
    """Read a terminal command run in `workdir` (default: the workspace root) of `workspace`."""
    facts = ShellFacts()
    cwd: PurePosixPath | None = workspace.root
    if workdir not in (None, ""):
        verdict = workspace.check(workdir)
        facts.paths.append(verdict)
        cwd = PurePosixPath(verdict.resolved) if isinstance(workdir, str) else None
    _Analyzer(facts, workspace, cwd).script(parse_script(command), depth=0)
    return facts


class _Analyzer:
    def __init__(self, facts: ShellFacts, workspace: Workspace, cwd: PurePosixPath | None) -> None:
        self.facts = facts
        self.workspace = workspace
        self.cwd = cwd  # None: a directory only known at run time
        self.variables: dict[str, str | None] = dict(_WELL_KNOWN)
        self.wrote_unnamed = ""  # a command that wrote files the reader cannot name, once one has run

    # --- scripts and pipelines ----------------------------------------------------------

    def script(self, script: Script, depth: int, stdin: _Stage | None = None) -> _Stage:
        self.facts.problems.extend(script.problems)
        for name in script.functions:
            self.facts.unknown(f"defines the shell function `{name}` (a command name policy cannot follow)")
        last = _Stage()
        for pipeline in script.pipelines:
            upstream = stdin or _Stage()
            for command in pipeline:
                upstream = self.command(command, upstream, depth)
            last = upstream
        return last

    def command(self, command: Command, upstream: _Stage, depth: int) -> _Stage:
        for group in command.groups:
            upstream = self.script(group, depth + 1, upstream)
        if command.stdin_text is not None:
            upstream = _Stage(output=self.static(command.stdin_text, depth))
        for redirect in command.redirects:
            verdict = self.redirect(redirect.op, redirect.target, depth)
            if verdict is not None and redirect.op == "<":
                upstream = _Stage(data=verdict.contents)
        words = self.strip_prefixes(command.words, depth)
        if not words:
            if not command.groups:
                self.assign(command.words, depth)
            return upstream if command.groups else _Stage()
        return self.run(words, upstream, depth)

    def assign(self, words: list[Word], depth: int) -> None:
        """`NAME=value` on its own: later words of the line see the value (when reading can know it)."""
        for word in words:
            if _ASSIGNMENT.match(word.text) and not word.text.split("=", 1)[0].endswith("+"):
                name, _, _ = word.text.partition("=")
                value = self.static(word, depth)
                self.variables[name] = value.partition("=")[2] if value is not None else None

    def strip_prefixes(self, words: list[Word], depth: int) -> list[Word]:
        for word in words:
            for sub in word.subs:
                self.script(sub, depth + 1)
        index = 0
        while index < len(words):
            word = words[index]
            if word.text in _LOOP_HEADS and not word.quoted:
                if len(words) > index + 1:
                    self.variables[words[index + 1].text] = None  # the loop variable: known only at run time
                return []  # `for x in a b`: a header, not a command
            if word.text == "function" and not word.quoted:
                self.facts.unknown(LATER["function"])
                return []
            if word.text in _RESERVED and not word.quoted:
                index += 1
                continue
            if word.assignment or _ASSIGNMENT.match(word.text) and not word.quoted:
                variable = word.text.split("=", 1)[0].rstrip("+")
                if variable in ("LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT"):
                    self.facts.flag("privilege_raising", word.text)
                self.sets(variable, self.static(word, depth))
                index += 1
                continue
            break
        return words[index:]

    # --- one command ----------------------------------------------------------------------

    def run(self, words: list[Word], upstream: _Stage, depth: int) -> _Stage:
        name_text = self.static(words[0], depth)
        if name_text is None or words[0].glob and name_text not in ("[", "[["):
            self.facts.flag("dynamic_command", _shown(words))
            self.facts.binaries.add("?")
            return _Stage()
        workspace_program = False
        if "/" in name_text:
            verdict = self.check(name_text)
            self.facts.paths.append(verdict)
            if SYSTEM_PROGRAM_DIRS.search(verdict.resolved):
                name_text = verdict.resolved  # a link to a system program runs under the program's own name
            else:
                workspace_program = self.runs_file(verdict, name_text)
        if words[0].subs and self.static_decoded(words[0], depth):
            self.facts.flag("decode_and_execute", _shown(words))  # a command name spelled by decoding
        name = posixpath.basename(name_text)
        if name.startswith("python") and re.fullmatch(r"python[0-9.]*", name):
            name_family = "python"
        else:
            name_family = name
        self.facts.binaries.add(name)
        args = words[1:]
        texts = [self.static(word, depth) for word in args]
        shown = " ".join([name_text, *(t if t is not None else "$(...)" for t in texts)])
        if not workspace_program:
            self.model(name, words[0], args, texts, shown)

        if name in _WRAPPERS or name == "env":
            if name in PRIVILEGE_WRAPPERS:
                self.facts.flag("privilege_raising", shown)
            if name in ("torsocks", "proxychains", "proxychains4"):
                self.facts.flag("network", shown)
            rest = self.unwrap(name, args, texts, depth)
            if not rest:
                return _Stage(data="the environment" if name == "env" else "")
            return self.run(rest, upstream, depth)
        if name == "su":
            self.facts.flag("privilege_raising", shown)
            script = _option_value(texts, ("-c", "--command"))
            if script is not None:
                self.inline_script(args[texts.index(script)] if script in texts else None, script, depth)
            return _Stage()
        if name in ("eval",) or (name in ("source", ".") and not texts):
            return self.execute_text(" ".join(t for t in texts if t is not None) if None not in texts else None,
                                     args, upstream, depth, shown)
        if name in ("source", "."):
            if args and args[0].subs:
                return self.execute_text(None, args[:1], upstream, depth, shown)
            self.paths(name, args, texts, depth)
            if texts and texts[0] is not None:
                self.runs_file(self.check(texts[0]), texts[0])
            return _Stage()
        if name in SHELLS or (name == "busybox" and texts[:1] == ["sh"]):
            return self.shell(args, texts, upstream, depth, shown)
        if name_family == "python" or name in CODE_INTERPRETERS:
            return self.interpreter(name_family, args, texts, upstream, depth, shown)
        if name == "find":
            self.find(args, texts, depth, shown)
            return _Stage()
        if name == "cd" or name == "pushd":
            self.change_directory(texts)
            return _Stage()
        if name in ("export", "declare", "typeset", "local", "readonly"):
            self.assign([word for word in args if _ASSIGNMENT.match(word.text)], depth)
            for word in args:
                self.sets(word.text.split("=", 1)[0], self.static(word, depth))
        if name == "read":
            for text in texts:
                if text is not None and not text.startswith("-"):
                    self.variables[text] = None

        self.network(name, args, texts, shown)
        self.sends(name, texts, upstream)
        self.destructive(name, texts, shown)
        self.privilege(name, texts, shown)
        first_path = len(self.facts.paths)
        self.paths(name, args, texts, depth)
        stage = self.output(name, texts, upstream, shown)
        if name in _PASSES_DATA and not any(t for t in texts if t and not t.startswith("-")):
            stage.data = upstream.data
        elif name in _READS_FILES and len(self.facts.paths) > first_path:
            stage.data = self.facts.paths[first_path].contents
        elif name in ("env", "printenv", "set", "export", "declare"):
            stage.data = "the environment"
        return stage

    def sends(self, name: str, texts: list[str | None], upstream: _Stage) -> None:
        """Files and data a network command sends out: curl -d @f, -F x=@f, -T f, wget --post-file, scp f host:,
        and whatever is piped or redirected into it."""
        args = [t for t in texts if t is not None]
        operands = [a for a in args if not a.startswith("-")]
        if name == "git" and operands[:1] == ["push"]:
            # A push to a URL named on the line (not a configured remote) sends the repository there.
            if any("://" in o or re.match(r"^[\w.+-]+@[\w.-]+:", o) for o in operands[1:2]):
                self.facts.uploads.append("the repository's contents")
            return
        if name not in NETWORK:
            return
        sent: list[str] = []
        for index, arg in enumerate(args):
            value = args[index + 1] if index + 1 < len(args) else ""
            option, _, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
            value = inline or value
            if name == "curl" and option in ("-d", "--data", "--data-binary", "--data-ascii", "--data-urlencode",
                                             "--json") and "@" in value:
                sent.append(value.split("@", 1)[1])
            elif name == "curl" and option in ("-F", "--form") and re.search(r"=[@<]", value):
                sent.append(re.split(r"=[@<]", value, maxsplit=1)[1].split(";", 1)[0])
            elif name == "curl" and option in ("-T", "--upload-file"):
                sent.append(value)
            elif name == "wget" and option in ("--post-file", "--body-file"):
                sent.append(value)
        if name in ("scp", "rsync", "sftp"):
            operands = [a for a in args if not a.startswith("-")]
            if operands and re.match(r"^(?:[\w.+-]+@)?[\w.-]+:", operands[-1]):
                sent.extend(o for o in operands[:-1] if not re.match(r"^(?:[\w.+-]+@)?[\w.-]+:", o))
        for path in sent:
            if path in ("-", ""):
                if upstream.data:
                    self.facts.uploads.append(upstream.data)
                continue
            verdict = self.check(path)
            self.facts.paths.append(verdict)
            self.facts.uploads.append(verdict.contents)
        if upstream.data and name in ("nc", "ncat", "netcat", "socat", "telnet", "openssl", "ssh") or \
                upstream.data and name == "curl" and any(a in ("-T", "--upload-file") for a in args):
            self.facts.uploads.append(upstream.data)

    def model(self, name: str, name_word: Word, args: list[Word], texts: list[str | None], shown: str) -> None:
        """Record what keeps this program's run from being understood (see programs.py)."""
        if _BRACES.search(name_word.text) and not name_word.quoted:
            self.facts.unknown(f"brace expansion builds the command `{name_word.text[:40]}`")
            return
        if name in _OPAQUE_WRAPPERS:
            self.facts.unknown(f"{name} runs a command in a way policy does not follow")
        elif name not in _WRAPPERS and name != "env":
            versioned = re.fullmatch(r"([a-z+]+?)-?[0-9][0-9.]*", name)  # python3.11, gcc-12, clang-15
            modelled_as = versioned.group(1) if versioned and name not in MODELLED else name
            reason = unmodelled(modelled_as, texts)
            if reason is not None:
                self.facts.unknown(reason)
        if name == "git":
            self.git_repository(texts)
            for text in texts:  # `git show HEAD:.env` reads .env as the commit holds it
                if text and ":" in text and not text.startswith("-") and "://" not in text:
                    self.facts.paths.append(self.check(text.split(":", 1)[1] or "."))
        if name in RUNS_WORKSPACE_CODE and not any(t in ("--version", "-V", "--help") for t in texts):
            self.runs_project_code(name, texts)
        if name not in ("echo", "printf", "eval", "cd", "pushd"):
            for word, text in zip(args, texts, strict=True):
                if text is None:
                    self.facts.unknown(f"the value of `{_shown([word])[:40]}` is only known at run time")
                    break

    def runs_project_code(self, name: str, texts: list[str | None]) -> None:
        """A build or test tool runs the code of the project it is pointed at: the workspace's is accepted, a
        project outside it or one this command just fetched or unpacked is not."""
        if self.wrote_unnamed:
            self.facts.unknown(f"{name} runs code after `{self.wrote_unnamed}` wrote files policy cannot name")
        places: list[str | None] = []
        if name not in _INTERPRETERS:  # their -c and -p mean code, not a project; their scripts are checked apart
            places = [texts[i + 1] for i, t in enumerate(texts[:-1]) if t in _PROJECT_OPTIONS]
            places += [t.split("=", 1)[1] for t in texts if t and t.startswith(tuple(f"{o}=" for o in _PROJECT_OPTIONS))]
        if self.cwd is None or not self.workspace.contains(self.cwd) or \
                any(place is None or self.check(place).outside for place in places):
            self.facts.unknown(f"{name} runs the code of a project outside the workspace")

    def sets(self, variable: str, assignment: str | None) -> None:
        """A variable set for a command: one through which programs run commands is not understood, nor a search
        path (PYTHONPATH, NODE_PATH ...) that reaches outside the workspace."""
        if runs_commands_through(variable):
            self.facts.unknown(f"sets {variable}, through which programs run other commands")
        elif variable in _SEARCH_PATHS:
            value = assignment.partition("=")[2] if assignment is not None else None
            if value is None or any(self.check(entry).outside for entry in value.split(":") if entry):
                self.facts.unknown(f"sets {variable} to load code from outside the workspace")

    def git_repository(self, texts: list[str | None]) -> None:
        """git reads the configuration of the repository it runs in, and that configuration can run commands."""
        places = [texts[i + 1] for i, t in enumerate(texts[:-1]) if t in ("-C", "--git-dir", "--work-tree")]
        places += [t.split("=", 1)[1] for t in texts if t and t.startswith(("--git-dir=", "--work-tree="))]
        outside = self.cwd is None or not self.workspace.contains(self.cwd) or \
            any(place is None or self.check(place).outside for place in places)
        if outside:
            self.facts.unknown("git runs in a repository outside the workspace, whose configuration can run commands")

    def runs_file(self, verdict: PathVerdict, shown: str) -> bool:
        """A program or script run from a file: the workspace's own code is accepted (like `make` or a test runner)
        unless this very command wrote it or wrote files it cannot name; anything else is not understood."""
        if verdict.outside:
            self.facts.unknown(f"runs {shown}, a file outside the workspace and the system's program directories")
            return False
        if verdict.resolved in {w.resolved for w in self.facts.written}:
            self.facts.unknown(f"runs {shown}, which this command wrote")
        elif self.wrote_unnamed:
            self.facts.unknown(f"runs {shown} after `{self.wrote_unnamed}` wrote files policy cannot name")
        return True

    def unwrap(self, name: str, args: list[Word], texts: list[str | None], depth: int) -> list[Word]:
        if name == "env":
            index = 0
            while index < len(args):
                text = texts[index] or ""
                if text in ("-u", "--unset", "-C", "--chdir"):
                    index += 2
                elif text in ("-S", "--split-string") or text.startswith("--split-string="):
                    script = texts[index + 1] if text in ("-S", "--split-string") and index + 1 < len(texts) \
                        else text.partition("=")[2]
                    self.execute_text(script, args[index + 1:index + 2], _Stage(), depth, "env -S")
                    return []
                elif text.startswith("-") or _ENV_ASSIGNMENT.match(text):
                    if text.split("=", 1)[0] in ("LD_PRELOAD", "LD_AUDIT"):
                        self.facts.flag("privilege_raising", text)
                    if _ENV_ASSIGNMENT.match(text):
                        self.sets(text.split("=", 1)[0], text)
                    index += 1
                else:
                    break
            return args[index:]
        valued, positional = _WRAPPERS[name]
        index = 0
        while index < len(args):
            text = texts[index]
            if text == "--":
                index += 1
                break
            if text is None or not text.startswith("-") or text == "-":
                break
            if name in ("sudo", "su") and text in ("-i", "-s", "--login", "--shell") and index + 1 == len(args):
                self.facts.binaries.add("sh")
            index += 2 if text in valued else 1
        if name == "flock" and "-c" in texts:
            script = _option_value(texts, ("-c",))
            self.inline_script(None, script, depth)
            return []
        return args[index + positional:]

    # --- interpreters and code that runs code ---------------------------------------------

    def shell(self, args: list[Word], texts: list[str | None], upstream: _Stage, depth: int, shown: str) -> _Stage:
        for index, text in enumerate(texts):
            if text is not None and text.startswith("-") and "c" in text.lstrip("-") and not text.startswith("--"):
                script_word = args[index + 1] if index + 1 < len(args) else None
                if script_word is None:
                    self.facts.problems.append(f"`{shown}` has -c without a script")
                    return _Stage()
                self.inline_script(script_word, texts[index + 1], depth)
                return _Stage()
        substituted = [word for word in args if word.subs and not word.text.startswith("-")]
        for word in substituted:
            self.executes(word, depth, shown)  # `bash <(curl ...)`: runs what the substitution produces
        operands = [t for t in texts if t is not None and not t.startswith("-")]
        if operands or substituted:
            self.paths("sh", args, texts, depth)  # `bash script.sh`: runs a file
            if operands:
                self.runs_file(self.check(operands[0]), operands[0])
            return _Stage()
        return self.reads_stdin_as_code("sh", upstream, depth, shown)

    def interpreter(self, family: str, args: list[Word], texts: list[str | None], upstream: _Stage, depth: int,
                    shown: str) -> _Stage:
        inline_flags = "-c" if family == "python" else CODE_INTERPRETERS.get(family, "")
        if any(t in ("--version", "-V", "--help", "-h", "-v") for t in texts[:1]):
            return _Stage()  # prints and exits: reads no code
        for index, text in enumerate(texts):
            if text is None:
                continue
            if text.lower() in ("-encodedcommand", "-enc", "-e") and family in ("pwsh", "powershell"):
                self.facts.flag("decode_and_execute", shown)
                return _Stage()
            flag = text[:2]
            if inline_flags and text.startswith("-") and not text.startswith("--") and flag[1:] in inline_flags:
                code = text[2:] or (texts[index + 1] if index + 1 < len(texts) else None)
                word = args[index + 1] if not text[2:] and index + 1 < len(args) else args[index]
                if code is None:
                    self.executes(word, depth, shown)
                else:
                    self.facts.inline_code.append((family, code))
                    self.inline_code_understood(family, code)
                    if word.subs and self.static_decoded(word, depth):
                        self.facts.flag("decode_and_execute", shown)
                return _Stage()
        operands = [t for t in texts if t is not None and not t.startswith("-")]
        if operands and operands[0] != "-":
            self.paths(family, args, texts, depth)
            if not (family == "python" and any(t in ("-m",) or (t or "").startswith("-m") for t in texts)):
                self.runs_file(self.check(operands[0]), operands[0])
            return _Stage()
        return self.reads_stdin_as_code(family, upstream, depth, shown)

    def inline_code_understood(self, family: str, code: str) -> None:
        """Python given on the command line is read like execute_code; other languages' code is not read."""
        if family != "python":
            self.facts.unknown(f"{family} code given on the command line is not read")
            return
        found = code_facts(code, "python")
        operations, evidence = found.operations, found.evidence
        for path in found.paths_written:  # `python3 -c 'open("x.sh", "w")...' && sh x.sh` runs what it wrote
            self.facts.written.append(self.check(path))
        risky = sorted(operations & RISKY_OPERATIONS)
        if risky:
            self.facts.unknown(f"python code on the command line does {', '.join(risky)} ({', '.join(evidence)})")

    def reads_stdin_as_code(self, family: str, upstream: _Stage, depth: int, shown: str) -> _Stage:
        if upstream.fetched:
            self.facts.flag("fetch_and_execute", shown)
        if upstream.decoded:
            self.facts.flag("decode_and_execute", shown)
        if upstream.output is None:
            if not (upstream.fetched or upstream.decoded):
                self.facts.flag("dynamic_command", f"{shown} runs code read from its input")
        elif family == "sh":
            self.script(parse_script(upstream.output, depth + 1), depth + 1)
        else:
            self.facts.inline_code.append((family, upstream.output))
            self.inline_code_understood(family, upstream.output)
        return _Stage()

    def inline_script(self, word: Word | None, script: str | None, depth: int) -> None:
        if script is not None:
            if word is not None and word.subs and self.static_decoded(word, depth):
                self.facts.flag("decode_and_execute", script)
            self.script(parse_script(script, depth + 1), depth + 1)
        elif word is not None:
            self.executes(word, depth, "sh -c")

    def execute_text(self, text: str | None, words: list[Word], upstream: _Stage, depth: int, shown: str) -> _Stage:
        if text is not None:
            if any(word.subs for word in words) and any(self.static_decoded(word, depth) for word in words):
                self.facts.flag("decode_and_execute", shown)
            self.script(parse_script(text, depth + 1), depth + 1)
            return _Stage()
        for word in words:
            self.executes(word, depth, shown)
        return _Stage()

    def executes(self, word: Word, depth: int, shown: str) -> None:
        """A word whose run-time value is run as code: say what produced it."""
        producers = _Stage()
        for sub in word.subs:
            stage = self.pipeline_kind(sub)
            producers.fetched |= stage.fetched
            producers.decoded |= stage.decoded
        if producers.fetched:
            self.facts.flag("fetch_and_execute", shown)
        if producers.decoded:
            self.facts.flag("decode_and_execute", shown)
        if not (producers.fetched or producers.decoded):
            self.facts.flag("dynamic_command", shown)

    def pipeline_kind(self, script: Script) -> _Stage:
        stage = _Stage()
        for command in script.commands():
            words = [w for w in command.words if not _WORD_ASSIGNMENT.match(w.text)]
            name = posixpath.basename(words[0].text) if words else ""
            texts = [w.text for w in words[1:]]
            stage.fetched |= name in FETCHERS
            stage.decoded |= _is_decoder(name, texts)
            for group in command.groups:
                inner = self.pipeline_kind(group)
                stage.fetched |= inner.fetched
                stage.decoded |= inner.decoded
        return stage

    # --- static evaluation --------------------------------------------------------------------

    def static(self, word: Word, depth: int) -> str | None:
        """The word's value if reading can know it (substitutions of pure pipelines are evaluated)."""
        if not word.dynamic:
            return word.text
        variables = self.variables
        if "PWD" in word.variables:
            variables = {**variables, "PWD": str(self.cwd) if self.cwd is not None else None}
        return word.with_outputs([self.evaluate(sub, depth) for sub in word.subs], variables)

    def static_decoded(self, word: Word, depth: int) -> bool:
        return any(self.pipeline_kind(sub).decoded for sub in word.subs)

    def evaluate(self, script: Script, depth: int) -> str | None:
        if script.problems or len(script.pipelines) != 1 or depth > 8:
            return None
        stage = _Stage(output="")
        for command in script.pipelines[0]:
            if command.groups or command.redirects or not command.words:
                return None
            texts = [self.static(word, depth + 1) for word in command.words]
            if any(text is None for text in texts):
                return None
            stage = _pure_stage(texts, stage)  # type: ignore[arg-type]
            if stage is None:
                return None
        return stage.output

    # --- facts of ordinary commands --------------------------------------------------------------

    def output(self, name: str, texts: list[str | None], upstream: _Stage, shown: str) -> _Stage:
        if None not in texts:
            pure = _pure_stage([name, *texts], upstream)  # type: ignore[list-item]
            if pure is not None:
                return pure
        return _Stage(fetched=name in FETCHERS, decoded=_is_decoder(name, [t or "" for t in texts]) or
                      (upstream.decoded and name in ("cat", "tee", "tr", "rev", "sed")))

    def network(self, name: str, args: list[Word], texts: list[str | None], shown: str) -> None:
        for text in texts:
            if text and (match := _DEV_NET.search(text)):
                self.facts.flag("network", shown)
                self.facts.urls.append((f"{match.group(1)}://{match.group(2)}:{match.group(3)}", ""))
        if name == "git" and texts[:1] and texts[0] in ("clone", "fetch", "pull", "push", "ls-remote", "remote",
                                                         "submodule", "archive"):
            self.facts.flag("network", shown)
            for text in texts[1:]:
                if text and (remote := re.match(r"^[\w.+-]+@([\w.-]+):", text)):
                    self.facts.urls.append((remote.group(1), "ssh"))  # git@host:path, ssh's scp-like form
        if name not in NETWORK:
            return
        self.facts.flag("network", shown)
        scheme = {"ssh": "ssh", "scp": "ssh", "sftp": "sftp", "rsync": "rsync", "telnet": "telnet"}.get(name, "http")
        if name in ("nc", "ncat", "netcat", "socat", "ping", "ping6", "dig", "nslookup", "host", "nmap", "traceroute"):
            scheme = "tcp"
        for index, text in enumerate(texts):
            option, _, inline = (text or "").partition("=") if (text or "").startswith("--") else (text or "", "", "")
            value = inline or (texts[index + 1] or "" if index + 1 < len(texts) else "")
            if name == "curl" and option in ("--resolve", "--connect-to"):
                # --resolve host:port:address, --connect-to host:port:host2:port2: the address really connected to
                parts = re.split(r":(?![^\[]*\])", value)
                target = parts[2] if option == "--resolve" and len(parts) > 2 else \
                    parts[2] if len(parts) > 3 else ""
                if target:
                    self.facts.urls.append((target.strip("[]").split(",")[0], "http"))
            elif name == "curl" and option in ("-x", "--proxy", "--preproxy", "--socks4", "--socks4a", "--socks5",
                                               "--socks5-hostname") and value:
                self.facts.urls.append((value, "http"))
        operand_index = 0
        for index, text in enumerate(texts):
            if text is None or text.startswith("-") and "://" not in text:
                continue
            previous = texts[index - 1] if index else None
            if name in ("curl", "wget") and previous is not None and (previous in _CURL_VALUED or
                                                                    re.fullmatch(r"-[A-Za-z]*[TdFoHuAeXbcEw]",
                                                                                 previous)):
                continue  # an option's value (a file, a header, a method), not where the request goes
            operand_index += 1
            if name in ("nc", "ncat", "netcat", "telnet") and text.isdigit() and operand_index > 1 or \
                    text.isdigit() and previous is not None and re.fullmatch(r"-[A-Za-z]", previous):
                continue  # the port after the host; an option's count (`ping -c 3`)
            if name in ("scp", "rsync", "sftp") and "://" not in text and not re.match(r"^[^/]*[:@]", text):
                continue  # a local file
            if re.match(r"^(?i:https?|wss?|ftp):", text):
                self.facts.urls.append((text, ""))  # http:/x and http:x are http://x to curl and browsers
                continue
            if name == "socat" and ":" in text:
                _, _, text = text.partition(":")
            if "://" in text:
                self.facts.urls.append((text, ""))
                continue
            candidate = text.split("=", 1)[-1] if text.startswith("--") else text
            if _HOST_LIKE.match(candidate) and (any(c in candidate for c in ".:[") or candidate.isdigit()
                                                or candidate.startswith("localhost")):
                host = candidate.rsplit("@", 1)[-1]
                if not host.startswith("[") and host.count(":") == 1 and name in ("scp", "rsync", "sftp"):
                    host = host.split(":", 1)[0]  # user@host:path
                self.facts.urls.append((host, scheme))

    def destructive(self, name: str, texts: list[str | None], shown: str) -> None:
        args = [t for t in texts if t is not None]
        flags = "".join(t.lstrip("-") for t in args if t.startswith("-") and not t.startswith("--"))
        long_flags = {t for t in args if t.startswith("--")}
        operands = [t for t in args if not t.startswith("-")]
        reason = None
        if name in ALWAYS_DESTRUCTIVE or name.startswith("mkfs"):
            reason = shown
        elif name == "rm":
            recursive = "r" in flags or "R" in flags or "--recursive" in long_flags
            wide = any(o in ("/", "*", ".", "..", "~") or o.endswith("/*") for o in operands)
            leaves = any(_leaves_or_is_root(self.check(o), self.workspace) for o in operands)
            if recursive or wide or leaves or "--no-preserve-root" in long_flags or None in texts:
                reason = shown
        elif name == "dd" and any(t.startswith("of=") for t in args):
            reason = shown
        elif name == "git" and operands:
            sub = operands[0]
            if (sub == "reset" and "--hard" in long_flags) or (sub == "clean" and "f" in flags) or \
                    (sub == "push" and ("f" in flags or any(f.startswith(("--force", "--delete", "--mirror"))
                                                            for f in long_flags) or any(o.startswith("+")
                                                                                        for o in operands[1:]))) or \
                    (sub == "branch" and "D" in flags) or sub in ("filter-branch", "filter-repo") or \
                    (sub == "stash" and operands[1:2] == ["clear"]) or (sub == "checkout" and "." in operands
                                                                         and "--" in args):
                reason = shown
        elif name in ("chmod", "chown", "chgrp") and ("R" in flags or "--recursive" in long_flags):
            reason = shown
        elif name == "kill" and any(o in ("-1", "1") for o in args[1:] if o != "-9") or \
                (name == "kill" and "-1" in operands):
            reason = shown
        elif name == "systemctl" and any(o in ("stop", "disable", "mask", "kill", "poweroff", "reboot", "halt",
                                                "isolate") for o in operands):
            reason = shown
        elif name == "crontab" and "r" in flags:
            reason = shown
        elif name in ("docker", "podman") and any(o in ("rm", "rmi", "prune", "kill") for o in operands):
            reason = shown
        elif name == "kubectl" and any(o in ("delete", "drain", "cordon") for o in operands[:1]):
            reason = shown
        elif name == "terraform" and operands[:1] == ["destroy"]:
            reason = shown
        elif name == "mv" and operands and operands[-1] == "/dev/null":
            reason = shown
        elif name == "redis-cli" and any(o.lower() in ("flushall", "flushdb") for o in operands):
            reason = shown
        elif name in ("aws", "gsutil", "gcloud", "az") and any(o in ("rm", "rb", "delete") for o in operands):
            reason = shown
        elif any(_SQL_DESTRUCTION.search(t) for t in args):
            reason = shown
        if reason is not None:
            self.facts.flag("destructive", reason)

    def privilege(self, name: str, texts: list[str | None], shown: str) -> None:
        args = [t for t in texts if t is not None]
        if name in PRIVILEGE_COMMANDS:
            if name != "sysctl" or any(t in ("-w", "--write") or "=" in t for t in args):
                self.facts.flag("privilege_raising", shown)
        if name == "chmod" and any(re.fullmatch(r"(?:[ugoa]*[+=][rwxXt]*s[rwxXst]*|0?[2467][0-7]{3})", t)
                                   for t in args):
            self.facts.flag("privilege_raising", shown)
        if name in ("docker", "podman") and any(t == "--privileged" or t.startswith(("--cap-add", "-v/:", "/:/"))
                                                 or t in ("--pid=host", "--net=host", "--network=host")
                                                 for t in args):
            self.facts.flag("privilege_raising", shown)

    def find(self, args: list[Word], texts: list[str | None], depth: int, shown: str) -> None:
        index = 0
        while index < len(texts):
            text = texts[index]
            if text in ("-exec", "-execdir", "-ok", "-okdir"):
                end = index + 1
                while end < len(texts) and texts[end] not in (";", "+"):
                    end += 1
                if index + 1 < end:
                    self.run(args[index + 1:end], _Stage(), depth + 1)
                index = end + 1
                continue
            if text == "-delete":
                self.facts.flag("destructive", shown)
            elif text is not None and not text.startswith("-") and index == 0 or \
                    (text is not None and not text.startswith(("-", "(", ")", "!")) and all(
                        t is not None and not t.startswith("-") for t in texts[:index])):
                self.facts.paths.append(self.check(text))
            index += 1

    def change_directory(self, texts: list[str | None]) -> None:
        target = next((t for t in texts if t is None or not t.startswith("-")), "~")
        if target is None or target == "-":
            self.cwd = None
            return
        verdict = self.check(target)
        self.facts.paths.append(verdict)
        self.cwd = PurePosixPath(normalize(verdict.resolved)) if not verdict.resolved.startswith("?") else None

    def paths(self, name: str, args: list[Word], texts: list[str | None], depth: int) -> None:
        operands = [(i, t) for i, t in enumerate(texts) if t is not None and t != "--"]
        written: set[int] = set()
        if name in _WRITE_ALL:
            written = {i for i, t in operands if not t.startswith("-")}
            if name in ("chmod", "chown", "chgrp"):
                mode = min(written, default=None)
                written.discard(mode)
                operands = [(i, t) for i, t in operands if i != mode]
        elif name in _WRITE_LAST:
            plain = [i for i, t in operands if not t.startswith("-")]
            written = set(plain[-1:])
        elif name in ("sed", "perl") and any(t.startswith("-i") or t == "--in-place" for _, t in operands):
            plain = [i for i, t in operands if not t.startswith("-")]
            written = set(plain[1:]) if name == "sed" else set(plain)
        flags = "".join(t[1:] for _, t in operands if t.startswith("-") and not t.startswith("--"))
        recursive = name in ("rg", "ag", "ack", "tar", "zip", "rsync") or name in ("grep", "egrep", "fgrep", "cp") and \
            (any(flag in flags for flag in "rRa") or any(t in ("--recursive", "--archive") for _, t in operands))
        if name in _WRITES_UNNAMED and not self.wrote_unnamed and _writes_unnamed(name, texts):
            self.wrote_unnamed = " ".join(t for t in [name, *texts[:2]] if t is not None)
        for index, text in operands:
            value = text
            if name == "dd" and text.startswith(("of=", "if=")):
                value = text[3:]
                if text.startswith("of="):
                    written.add(index)
            elif text.startswith("--") and "=" in text:
                value = text.split("=", 1)[1]
            elif text.startswith("-"):
                continue
            previous = texts[index - 1] if index else None
            if previous in ("-o", "--output", "--output-file", "--out", "--log-file") or \
                    text.startswith(("--output=", "--output-file=", "--log-file=", "--out=")):
                written.add(index)  # sort -o, git diff --output=, pytest --log-file=: the file is written
            if (previous in ("-o", "-O", "--output", "--output-document", "-P", "--directory-prefix", "-C", "-d",
                             "--directory") or name in ("curl", "wget") and previous is not None and
                    re.fullmatch(r"-[A-Za-z]*[oO]", previous)) and name in ("curl", "wget", "tar", "unzip", "git",
                                                                             "aria2c"):
                written.add(index)
            outside_cwd = self.cwd is None or not self.workspace.contains(self.cwd)
            if not _path_like(value) and index not in written and not _BRACES.search(value) and not outside_cwd and \
                    not any(c in value for c in "*?["):
                continue
            if "://" in value or _HARMLESS_DEVICES.match(value):
                continue
            for spelling in _brace_expansions(value)[1:]:  # `{.e,}nv` is `.env nv`: each is a path of its own
                self.facts.paths.append(self.check(spelling))
            verdict = self.check(value)
            if recursive and holds_secrets(normalize(verdict.resolved)) and index not in written:
                verdict = dataclasses.replace(verdict, secret=True)  # `grep -r x ~` reads the secrets below ~
            self.facts.paths.append(verdict)
            if name in ("cp", "ln", "install", "mv", "rsync", "dd") and SYSTEM_PROGRAM_DIRS.search(verdict.resolved) \
                    and index not in written:
                self.facts.unknown(f"{name} copies the program {verdict.resolved} (a program under another name)")
            if index in written:
                self.facts.written.append(verdict)
                if _sensitive_write(verdict):
                    self.facts.flag("privilege_raising", f"{name} {value}")

    def redirect(self, op: str, target: Word, depth: int) -> PathVerdict | None:
        text = self.static(target, depth)
        if text is None:
            self.facts.problems.append("a redirection target is only known at run time")
            return None
        if match := _DEV_NET.search(text):
            self.facts.flag("network", f"{op} {text}")
            self.facts.urls.append((f"{match.group(1)}://{match.group(2)}:{match.group(3)}", ""))
            if op not in ("<", "<&"):
                self.facts.uploads.append("command output")
            return None
        if op in (">&", "<&") and (text.isdigit() or text == "-"):
            return None
        if _HARMLESS_DEVICES.match(text):
            return None
        verdict = self.check(text)
        self.facts.paths.append(verdict)
        if op not in ("<", "<&"):
            self.facts.written.append(verdict)
            if _sensitive_write(verdict):
                self.facts.flag("privilege_raising", f"{op} {text}")
            if re.match(r"^/dev/(?:sd|nvme|hd|vd|xvd|mmcblk|mem|kmem|port)", verdict.resolved):
                self.facts.flag("destructive", f"{op} {text}")
        return verdict

    def check(self, path: str) -> PathVerdict:
        if self.cwd is None and not path.startswith(("/", "~")):
            return PathVerdict(path, f"?/{path}", outside=True, via_symlink=False,
                               secret=looks_secret(path) or glob_may_match_secret(path))
        return self.workspace.check(path, self.cwd)


def _leaves_or_is_root(verdict: PathVerdict, workspace: Workspace) -> bool:
    return verdict.outside or verdict.resolved == str(workspace.root)


def _shown(words: list[Word]) -> str:
    return " ".join(re.sub("\ue000\\d+\ue001", "$(...)", word.text).replace("\ue002", "$").replace("\ue003", "")
                    for word in words)


def _option_value(texts: list[str | None], options: tuple[str, ...]) -> str | None:
    for index, text in enumerate(texts):
        if text in options and index + 1 < len(texts):
            return texts[index + 1]
        for option in options:
            if text and option.startswith("--") and text.startswith(option + "="):
                return text.split("=", 1)[1]
    return None


def _writes_unnamed(name: str, texts: list[str | None]) -> bool:
    """Does this run leave files whose names the reader does not know (extracting, downloading, cloning)?"""
    args = [t for t in texts if t is not None]
    operands = [t for t in args if not t.startswith("-")]
    if name == "tar":
        return any(not a.startswith("--") and "x" in a or a in ("--extract", "--get") for a in args[:2])
    if name == "curl":
        return any(a in ("--remote-name", "--remote-name-all") or re.fullmatch(r"-[A-Za-z]*[OJ][A-Za-z]*", a)
                   for a in args)
    if name == "wget":
        return not any(a in ("-O", "--output-document") or a.startswith("--output-document=") for a in args)
    if name == "git":
        return bool(operands[:1]) and operands[0] in ("clone", "pull", "checkout", "fetch", "am", "apply", "merge",
                                                      "submodule", "switch", "restore", "stash", "reset")
    return True


def _brace_expansions(text: str, limit: int = 64) -> list[str]:
    """`a{b,c}d` as bash expands it (`abd acd`; `{1..3}` too), the text itself first; at most `limit`."""
    results, pending = [text], [text]
    while pending and len(results) < limit:
        current = pending.pop()
        match = _BRACES.search(current)
        if match is None:
            continue
        body = match.group(0)[1:-1]
        if ".." in body and "," not in body:
            low, _, high = body.partition("..")
            if low.isdigit() and high.isdigit() and abs(int(high) - int(low)) < limit:
                step = 1 if int(high) >= int(low) else -1
                choices = [str(n) for n in range(int(low), int(high) + step, step)]
            elif len(low) == 1 and len(high) == 1:
                choices = [chr(c) for c in range(min(ord(low), ord(high)), max(ord(low), ord(high)) + 1)][:limit]
            else:
                continue
        else:
            choices = body.split(",")
        for choice in choices:
            expanded = current[:match.start()] + choice + current[match.end():]
            if expanded not in results:
                results.append(expanded)
                pending.append(expanded)
    return results[:limit]


def _path_like(text: str) -> bool:
    return "/" in text or text.startswith(("~", ".")) or looks_secret(text)


def _is_decoder(name: str, args: list[str]) -> bool:
    joined = " ".join(args)
    flags = {a for a in args if a.startswith("-")}
    if name in ("base64", "base32", "basenc", "base58"):
        return bool(flags & {"-d", "-D", "--decode", "-di", "-id"})
    if name == "xxd":
        return any("r" in f for f in flags)
    if name == "openssl":
        return ("enc" in args or "base64" in args) and "-d" in flags
    if name in ("uudecode", "gunzip", "zcat", "bunzip2", "bzcat", "xzcat", "unxz", "zstdcat", "unzstd", "rev",
                "tr", "lzcat"):
        return True
    if name in ("gzip", "xz", "bzip2", "zstd", "lzma"):
        return bool(flags & {"-d", "--decompress", "-dc", "-cd"})
    if name == "printf":
        return bool(_ESCAPED.search(joined))
    if name == "echo":
        return any(f.startswith("-") and "e" in f for f in flags) and bool(_ESCAPED.search(joined))
    return False


def _pure_stage(texts: list[str], upstream: _Stage) -> _Stage | None:
    """Evaluate echo/printf/base64 -d/base32 -d/xxd -r -p/rev/cat as a shell would, or None."""
    name, args = posixpath.basename(texts[0]), texts[1:]
    decoded = upstream.decoded
    try:
        if name == "echo":
            flags, words = _echo_flags(args)
            text = " ".join(words)
            if "e" in flags:
                text = ansi_c(text)
            return _Stage(text if "n" in flags else text + "\n", decoded=decoded or "e" in flags and text != " ".join(
                words))
        if name == "printf" and args:
            return _Stage(_printf(args[0], args[1:]), decoded=decoded or bool(_ESCAPED.search(" ".join(args))))
        source = upstream.output
        if source is None:
            return None
        if name == "cat" and not args:
            return _Stage(source, decoded=decoded, fetched=upstream.fetched)
        if name in ("base64", "base32") and set(args) & {"-d", "--decode", "-D"}:
            cleaned = "".join(source.split())
            raw = base64.b64decode(cleaned + "=" * (-len(cleaned) % 4)) if name == "base64" else \
                base64.b32decode(cleaned + "=" * (-len(cleaned) % 8), casefold=True)
            return _Stage(raw.decode("utf-8", "replace"), decoded=True)
        if name == "xxd" and any("r" in a for a in args if a.startswith("-")):
            return _Stage(bytes.fromhex("".join(source.split())).decode("utf-8", "replace"), decoded=True)
        if name == "rev" and not args:
            return _Stage("\n".join(line[::-1] for line in source.rstrip("\n").split("\n")) + "\n", decoded=True)
    except (binascii.Error, ValueError):
        return None
    return None


def _echo_flags(args: list[str]) -> tuple[str, list[str]]:
    flags = ""
    index = 0
    while index < len(args) and re.fullmatch(r"-[neE]+", args[index]):
        flags += args[index][1:]
        index += 1
    return flags, args[index:]


def _printf(fmt: str, args: list[str]) -> str:
    out: list[str] = []
    remaining = list(args)
    for _ in range(64):
        pieces = re.split(r"(%%|%[-+ #0]*\d*(?:\.\d+)?[sbdciouxXfgeE])", fmt)
        for piece in pieces:
            if piece == "%%":
                out.append("%")
            elif piece.startswith("%") and len(piece) > 1:
                value = remaining.pop(0) if remaining else ""
                out.append(ansi_c(value) if piece.endswith("b") else value)
            else:
                out.append(ansi_c(piece))
        if not remaining:
            break
    return "".join(out)
