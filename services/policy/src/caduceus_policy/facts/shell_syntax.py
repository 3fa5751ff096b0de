"""Reading a shell command line the way a POSIX shell (bash) would split it, without running anything.

The result is the simple commands a line runs, grouped in pipelines, with quote removal
done (`b""ash` is `bash`, `$'\\x72m'` is `rm`), redirections separated from arguments,
here-documents attached, and command substitutions (`$( )`, backticks, `<( )`) parsed as
commands of their own. A word whose value is only known at run time (`$VAR`, `$( )`,
globs) is marked dynamic. What cannot be read (an unclosed quote) is reported, never guessed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ASSIGNMENT_START = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\+?=")
MAX_DEPTH = 16  # nesting of substitutions and `sh -c` scripts; deeper is reported as unreadable
_OPERATORS = ("&&", "||", ";;", "|&", "|", "&", ";", "\n")
_REDIRECTS = ("&>>", "&>", "<<<", "<<-", "<<", ">>", ">&", "<&", ">|", "<>", ">", "<")
# Runs of characters with no meaning to the reader, consumed at once (the readers below stop at every other one).
_PLAIN_RUN = re.compile(r"[^ \t\r\n;&|()<>\\'\"$`*?\[]+")
_QUOTED_RUN = re.compile(r'[^"\\$`]+')
_BLANKS = re.compile(r"(?:[ \t\r]|\\\n)+")
_ANSI_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "e": "\x1b", "E": "\x1b", "f": "\f",
                 "v": "\v", "\\": "\\", "'": "'", '"': '"', "?": "?"}


@dataclass
class Word:
    """One word after quote removal. `subs` are the command substitutions inside it, in order."""

    text: str = ""
    dynamic: bool = False
    quoted: bool = False
    glob: bool = False
    # Set by $1, ${x:-y}, $((...)) and the like: a value no reading of the line can know.
    unknown: bool = False
    # Starts with an unquoted `NAME=` (an assignment even when its value is quoted: `PAGER='less -R'`).
    assignment: bool = False
    subs: list[Script] = field(default_factory=list)
    # `$NAME` and `${NAME}`: known when the line itself (or the well-known environment) gives NAME a value.
    variables: list[str] = field(default_factory=list)

    def with_outputs(self, outputs: list[str | None],
                     variables: Mapping[str, str | None] | None = None) -> str | None:
        """The word's text with each substitution replaced by its output and each variable by its value, or None
        when any is unknown."""
        if self.unknown or len(outputs) != len(self.subs) or any(o is None for o in outputs):
            return None
        text = self.text
        for index, output in enumerate(outputs):
            text = text.replace(sub_marker(index), (output or "").rstrip("\n"))
        for name in self.variables:
            value = (variables or {}).get(name)
            if value is None:
                return None
            text = text.replace(variable_marker(name), value)
        return text


def variable_marker(name: str) -> str:
    """Stands for the value of variable `name` inside a word's text."""
    return f"\ue002{name}\ue003"


def sub_marker(index: int) -> str:
    """Stands for substitution `index` inside a word's text (private-use characters cannot be typed by accident)."""
    return f"\ue000{index}\ue001"


@dataclass
class Redirect:
    op: str
    target: Word
    fd: str = ""


@dataclass
class Command:
    """One simple command: its words, its redirections, and the text it reads from a here-doc or here-string."""

    words: list[Word] = field(default_factory=list)
    redirects: list[Redirect] = field(default_factory=list)
    stdin_text: Word | None = None
    groups: list[Script] = field(default_factory=list)  # ( subshell ) or { group } run in this position


@dataclass
class Script:
    """A command list: pipelines joined by `;`, `&&`, `||`, `&` or newlines."""

    pipelines: list[list[Command]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    functions: list[str] = field(default_factory=list)  # names given a body with `name() { ...; }`

    def commands(self) -> list[Command]:
        return [command for pipeline in self.pipelines for command in pipeline]


class _Unreadable(Exception):
    pass


def ansi_c(text: str) -> str:
    """Decode the body of a `$'...'` string: \\xHH, \\uHHHH, \\NNN octal, \\n and friends."""
    out, i = [], 0
    while i < len(text):
        char = text[i]
        if char != "\\" or i + 1 >= len(text):
            out.append(char)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[nxt]
            digits = ""
            j = i + 2
            while j < len(text) and len(digits) < width and text[j] in "0123456789abcdefABCDEF":
                digits += text[j]
                j += 1
            if digits:
                out.append(chr(min(int(digits, 16), 0x10FFFF)))
                i = j
                continue
        if nxt in "01234567":
            j, digits = i + 1, ""
            while j < len(text) and len(digits) < 3 and text[j] in "01234567":
                digits += text[j]
                j += 1
            out.append(chr(int(digits, 8) & 0xFF))
            i = j
            continue
        if nxt == "c" and i + 2 < len(text):
            out.append(chr(ord(text[i + 2]) & 0x1F))
            i += 3
            continue
        out.append(_ANSI_ESCAPES.get(nxt, "\\" + nxt))
        i += 2
    return "".join(out)


class _Reader:
    def __init__(self, text: str, depth: int) -> None:
        self.text = text
        self.i = 0
        self.depth = depth
        self.pending_heredocs: list[tuple[Command, str, bool, bool]] = []

    def peek(self, n: int = 1) -> str:
        return self.text[self.i:self.i + n]

    def at_end(self) -> bool:
        return self.i >= len(self.text)

    # --- lists, pipelines, commands -------------------------------------------------

    def script(self, closer: str | None = None) -> Script:
        script = Script()
        pipeline: list[Command] = []
        command = Command()
        while True:
            self.skip_blanks()
            if self.at_end():
                if closer is not None:
                    raise _Unreadable(f"missing `{closer}`")
                break
            char = self.peek()
            if closer is not None and char == closer:
                self.i += 1
                break
            if char == "#" and not command.words:
                while not self.at_end() and self.peek() != "\n":
                    self.i += 1
                continue
            operator = next((op for op in _OPERATORS if self.text.startswith(op, self.i)), None) \
                if char in "&|;\n" else None
            if operator is not None:
                self.i += len(operator)
                if operator == "\n":
                    self.read_heredocs()
                if operator in ("|", "|&"):
                    pipeline.append(command)
                else:
                    pipeline.append(command)
                    script.pipelines.append([c for c in pipeline if _has_content(c)])
                    pipeline = []
                command = Command()
                continue
            if char == "(" and not command.words:
                self.i += 1
                command.groups.append(self.nested(")"))
                continue
            if char == ")":
                raise _Unreadable("unexpected `)`")
            if char == "(" and self.text.startswith("()", self.i):
                self.i += 2  # `name() { ...; }` defines a function: its body is read as commands below
                script.functions.extend(word.text for word in command.words[-1:])
                command = Command()
                continue
            redirect = self.redirect()
            if redirect is not None:
                if redirect.op in ("<<", "<<-"):
                    delimiter = redirect.target
                    self.pending_heredocs.append((command, delimiter.text, redirect.op == "<<-", delimiter.quoted))
                elif redirect.op == "<<<":
                    command.stdin_text = redirect.target
                else:
                    command.redirects.append(redirect)
                continue
            start = self.i
            command.words.append(self.word())
            if self.i == start:
                raise _Unreadable(f"unexpected `{char}`")
        pipeline.append(command)
        script.pipelines.append([c for c in pipeline if _has_content(c)])
        script.pipelines = [p for p in script.pipelines if p]
        return script

    def nested(self, closer: str) -> Script:
        if self.depth >= MAX_DEPTH:
            raise _Unreadable(f"nested deeper than {MAX_DEPTH} levels")
        inner = _Reader(self.text, self.depth + 1)
        inner.i = self.i
        script = inner.script(closer)
        self.i = inner.i
        return script

    def read_heredocs(self) -> None:
        for command, delimiter, strip_tabs, quoted in self.pending_heredocs:
            lines = []
            while not self.at_end():
                end = self.text.find("\n", self.i)
                line = self.text[self.i:] if end < 0 else self.text[self.i:end]
                self.i = len(self.text) if end < 0 else end + 1
                if (line.lstrip("\t") if strip_tabs else line) == delimiter:
                    break
                lines.append(line.lstrip("\t") if strip_tabs else line)
            body = "\n".join(lines)
            command.stdin_text = Word(text=body, dynamic=not quoted and ("$" in body or "`" in body), quoted=True)
        self.pending_heredocs = []

    def skip_blanks(self) -> None:
        blanks = _BLANKS.match(self.text, self.i)
        if blanks is not None:
            self.i = blanks.end()

    def redirect(self) -> Redirect | None:
        if self.text[self.i:self.i + 1] not in "0123456789<>&":  # every redirection starts so; "" is at the end
            return None
        start = self.i
        fd = ""
        while not self.at_end() and self.peek().isdigit():
            fd += self.peek()
            self.i += 1
        if not self.at_end() and self.peek() in "<>" and self.text.startswith(("<(", ">("), self.i):
            self.i = start
            return None  # process substitution: a word
        op = next((op for op in _REDIRECTS if self.text.startswith(op, self.i)), None)
        if op is None or (op in ("&>", "&>>") and fd):
            self.i = start
            return None
        self.i += len(op)
        self.skip_blanks()
        if self.at_end() or self.peek() in "\n;|&":
            raise _Unreadable(f"redirection `{op}` without a target")
        return Redirect(op=op, target=self.word(), fd=fd)

    # --- words ----------------------------------------------------------------------

    def word(self) -> Word:
        word = Word()
        parts: list[str] = []
        while not self.at_end():
            plain = _PLAIN_RUN.match(self.text, self.i)
            if plain is not None:
                if not parts and _ASSIGNMENT_START.match(plain.group()):
                    word.assignment = True
                parts.append(plain.group())
                self.i = plain.end()
                continue
            char = self.peek()
            if char in " \t\r\n;&|)" or (char in "<>" and not self.text.startswith(("<(", ">("), self.i)):
                break
            if char == "(":
                break  # only `name()` or a subshell may hold one here; the command list reads those
            if char == "\\":
                nxt = self.text[self.i + 1:self.i + 2]
                self.i += 2
                if nxt != "\n":
                    parts.append(nxt)
                    word.quoted = True
                continue
            if char == "'":
                end = self.text.find("'", self.i + 1)
                if end < 0:
                    raise _Unreadable("unclosed single quote")
                parts.append(self.text[self.i + 1:end])
                word.quoted = True
                self.i = end + 1
                continue
            if char == '"':
                self.i += 1
                parts.append(self.double_quoted(word))
                word.quoted = True
                continue
            if char == "$":
                parts.append(self.dollar(word, in_quotes=False))
                continue
            if char == "`":
                parts.append(self.backtick(word))
                continue
            if char in "<>" and self.peek(2) in ("<(", ">("):
                self.i += 2
                word.subs.append(self.nested(")"))
                word.dynamic = word.unknown = True  # names a pipe whose content is only known at run time
                parts.append("/dev/fd/63")
                continue
            if char in "*?[":
                word.glob = True
            parts.append(char)
            self.i += 1
        word.text = "".join(parts)
        return word

    def double_quoted(self, word: Word) -> str:
        parts: list[str] = []
        while True:
            if self.at_end():
                raise _Unreadable("unclosed double quote")
            run = _QUOTED_RUN.match(self.text, self.i)
            if run is not None:
                parts.append(run.group())
                self.i = run.end()
                continue
            char = self.peek()
            if char == '"':
                self.i += 1
                return "".join(parts)
            if char == "\\" and self.text[self.i + 1:self.i + 2] in ('$', '`', '"', "\\", "\n"):
                nxt = self.text[self.i + 1]
                if nxt != "\n":
                    parts.append(nxt)
                self.i += 2
                continue
            if char == "$":
                parts.append(self.dollar(word, in_quotes=True))
                continue
            if char == "`":
                parts.append(self.backtick(word))
                continue
            parts.append(char)
            self.i += 1

    def dollar(self, word: Word, *, in_quotes: bool) -> str:
        nxt = self.text[self.i + 1:self.i + 2]
        if nxt == "'" and not in_quotes:
            end = self.i + 2
            while end < len(self.text) and self.text[end] != "'":
                end += 2 if self.text[end] == "\\" else 1
            if end >= len(self.text):
                raise _Unreadable("unclosed $'...' string")
            body = self.text[self.i + 2:end]
            self.i = end + 1
            return ansi_c(body)
        if nxt == '"' and not in_quotes:
            self.i += 2
            return self.double_quoted(word)
        if self.text.startswith("$((", self.i):
            self.i += 3
            self.skip_balanced("((", "))")
            word.dynamic = word.unknown = True
            return "$((...))"
        if nxt == "(":
            self.i += 2
            word.subs.append(self.nested(")"))
            word.dynamic = True
            return sub_marker(len(word.subs) - 1)
        if nxt == "{":
            start = self.i + 2
            self.i += 2
            self.skip_balanced("{", "}")
            name = self.text[start:self.i - 1]
            word.dynamic = True
            if _NAME.fullmatch(name):
                word.variables.append(name)
                return variable_marker(name)
            word.unknown = True
            return "${...}"
        if nxt and (nxt.isalnum() or nxt in "_@*#?$!-"):
            start = self.i + 1
            self.i += 2
            if nxt.isalpha() or nxt == "_":
                while not self.at_end() and (self.peek().isalnum() or self.peek() == "_"):
                    self.i += 1
                word.dynamic = True
                word.variables.append(self.text[start:self.i])
                return variable_marker(self.text[start:self.i])
            word.dynamic = word.unknown = True
            return "$VAR"
        self.i += 1
        return "$"

    def backtick(self, word: Word) -> str:
        end = self.i + 1
        while end < len(self.text) and self.text[end] != "`":
            end += 2 if self.text[end] == "\\" else 1
        if end >= len(self.text):
            raise _Unreadable("unclosed backtick")
        inner = self.text[self.i + 1:end].replace("\\`", "`").replace("\\\\", "\\")
        self.i = end + 1
        word.subs.append(parse_script(inner, self.depth + 1))
        word.dynamic = True
        return sub_marker(len(word.subs) - 1)

    def skip_balanced(self, opener: str, closer: str) -> None:
        level = 1
        while not self.at_end():
            if self.text.startswith(closer, self.i):
                level -= 1
                self.i += len(closer)
                if level == 0:
                    return
                continue
            if self.text.startswith(opener, self.i):
                level += 1
                self.i += len(opener)
                continue
            self.i += 1
        raise _Unreadable(f"missing `{closer}`")


def _has_content(command: Command) -> bool:
    return bool(command.words or command.redirects or command.groups or command.stdin_text)


def parse_script(text: str, depth: int = 0) -> Script:
    """Parse a command line; a line that cannot be read comes back with its problem in `problems`."""
    if depth > MAX_DEPTH:
        return Script(problems=[f"nested deeper than {MAX_DEPTH} levels"])
    reader = _Reader(text, depth)
    try:
        script = reader.script()
        if reader.pending_heredocs:
            reader.read_heredocs()
        return script
    except _Unreadable as exc:
        return Script(problems=[str(exc)])
    except RecursionError:
        return Script(problems=["nested too deeply to read"])
