"""Exporting the trail: records read from the store in append order, told by the narrator, written in one
format to one sink; once (batch) or on and on as new records are appended (follow)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from caduceus_audit.adapters.delivery import Sink
from caduceus_audit.adapters.store import AuditStore, RecordFilter
from caduceus_audit.domain.narrative import Narrator, RecordView
from caduceus_audit.export.cef import to_cef
from caduceus_audit.export.jsonl import to_jsonl
from caduceus_audit.export.ocsf import to_ocsf
from caduceus_audit.export.otel import SpanBuilder
from caduceus_audit.export.syslog import to_syslog

Format = Literal["jsonl", "ocsf", "cef", "syslog", "otel"]
FORMATS: tuple[Format, ...] = ("jsonl", "ocsf", "cef", "syslog", "otel")
# Items handed to the sink at once.
SEND_BATCH = 500


class Formatter:
    """Turns record views into output items (text lines, or spans); `finish` returns what only the end completes."""

    def __init__(self, fmt: Format, *, hostname: str | None = None) -> None:
        self.format = fmt
        self.spans = SpanBuilder() if fmt == "otel" else None
        host = hostname or socket.gethostname()
        self._line: Callable[[RecordView], str] | None = {
            "jsonl": to_jsonl, "cef": to_cef, "syslog": lambda view: to_syslog(view, host),
            "ocsf": lambda view: _json_line(to_ocsf(view)),
        }.get(fmt)

    def items(self, view: RecordView) -> list[Any]:
        if self.spans is not None:
            return list(self.spans.feed(view))
        assert self._line is not None
        return [self._line(view)]

    def finish(self) -> list[Any]:
        return list(self.spans.flush()) if self.spans is not None else []


def _json_line(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


@dataclass
class Export:
    """One export run: which records, in which format, to which sink."""

    store: AuditStore
    where: RecordFilter
    formatter: Formatter
    sink: Sink
    narrator: Narrator = field(default_factory=Narrator)
    exported: int = 0
    last_id: int = 0

    def catch_up(self) -> int:
        """Export every matching record appended since the last call; returns how many."""
        pending: list[Any] = []
        before = self.exported
        for row in self.store.stream(self.where, after_id=self.last_id):
            self.last_id = row.id
            self.exported += 1
            pending += self.formatter.items(self.narrator.view(row))
            if len(pending) >= SEND_BATCH:
                self._send(pending)
                pending = []
        self._send(pending)
        return self.exported - before

    def follow(self, stop: threading.Event, poll_s: float = 1.0) -> None:
        """Keep exporting new records until `stop` is set (polling every `poll_s` seconds)."""
        while not stop.is_set():
            self.catch_up()
            stop.wait(poll_s)
        self.catch_up()

    def finish(self) -> None:
        self._send(self.formatter.finish())
        self.sink.close()

    def _send(self, items: Sequence[Any]) -> None:
        if items:
            self.sink.send(items)
