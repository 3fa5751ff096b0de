"""Exports a SIEM reads: OCSF checked against the schema's API Activity class, CEF and syslog that hostile
strings cannot break, syslog received by real UDP and TCP listeners (batch and follow), JSONL with filters,
and GenAI spans for each tool call and decision."""

from __future__ import annotations

import io
import json
import re
import socket
import socketserver
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.trace import StatusCode

from caduceus_audit import AuditStore
from caduceus_audit.adapters.delivery import DeliveryError, LineSink, SyslogSink
from caduceus_audit.adapters.store import RecordFilter
from caduceus_audit.domain.narrative import Narrator
from caduceus_audit.export.otel import SpanBuilder
from caduceus_audit.exporting import Export, Formatter
from caduceus_audit.testing import HOSTILE, STORY_START, Published, governed_session, record_published
from caduceus_contracts import ModelUsage, PolicyShadowDisagreed, subjects

OCSF = json.loads((Path(__file__).parent / "data" / "ocsf-1.8.0-api-activity.json").read_text())
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture()
def store(tmp_path: Path) -> Iterator[AuditStore]:
    """alice's governed session in acme (s1) with its model usage and a shadow pack's disagreement, and bob's
    in globex (s2), an hour later."""
    store = AuditStore(f"sqlite:///{tmp_path}/audit.db")
    session = governed_session("acme", "s1")
    at = session[-1].event.occurred_at
    extra = [ModelUsage(tenant="acme", workspace="default", session_id="s1", user="alice", model="m-large",
                        prompt_tokens=120, completion_tokens=30, cost_usd=0.0015, occurred_at=at),
             PolicyShadowDisagreed(tenant="acme", call_id="s1-call1", workspace="default", tool="terminal",
                                   live_version="v7", live_verdict="allow", shadow_version="v8", shadow_verdict="deny",
                                   occurred_at=at)]
    record_published(store, session + [Published(subject, event, {"Nats-Msg-Id": event.event_id})
                                       for subject, event in zip((subjects.model_usage("acme"),
                                                                  subjects.policy_shadow("acme")), extra)])
    record_published(store, governed_session("globex", "s2", user="bob", trace_id="ab" * 16,
                                             start=STORY_START + timedelta(hours=1)))
    yield store
    store.close()


def export_lines(store: AuditStore, fmt: str, where: RecordFilter = RecordFilter()) -> list[str]:
    written = io.StringIO()
    run = Export(store, where, Formatter(fmt, hostname="audit-host"), LineSink(written))  # type: ignore[arg-type]
    run.catch_up()
    run.finish()
    return written.getvalue().splitlines()


# --- OCSF -------------------------------------------------------------------------------------------------------


def ocsf_problems(value: Any, spec: dict[str, Any], where: str, profiles: set[str]) -> list[str]:
    """What makes `value` not an instance of the class or object `spec` (the schema's own rules, cut down)."""
    problems = []
    attributes = spec["attributes"]
    for name, attr in attributes.items():
        active = attr.get("profile") is None or attr["profile"] in profiles
        if attr["requirement"] == "required" and active and name not in value:
            problems.append(f"{where}.{name} is required")
    for name, item in value.items():
        attr = attributes.get(name)
        if attr is None:
            problems.append(f"{where}.{name} is not an attribute of {where}")
            continue
        for n, element in enumerate(item if attr.get("is_array") else [item]):
            problems += ocsf_value_problems(element, attr, f"{where}.{name}" + (f"[{n}]" if attr.get("is_array") else ""),
                                            profiles)
        if attr.get("is_array") and not isinstance(item, list):
            problems.append(f"{where}.{name} must be an array")
    group = spec.get("constraints", {}).get("at_least_one")
    if group and not any(name in value for name in group):
        problems.append(f"{where} needs at least one of {group}")
    return problems


def ocsf_value_problems(value: Any, attr: dict[str, Any], where: str, profiles: set[str]) -> list[str]:
    kind = attr["type"]
    if kind in OCSF["objects"]:
        if not isinstance(value, dict):
            return [f"{where} must be an object"]
        return ocsf_problems(value, OCSF["objects"][kind], where, profiles)
    if kind == "object":
        return [] if isinstance(value, dict) else [f"{where} must be an object"]
    base = OCSF["types"].get(kind, {}).get("base")
    checks = {"string_t": str, "integer_t": int, "long_t": int, "boolean_t": bool, "float_t": float}
    if base is None:
        return [f"{where}: type {kind} is not in the test data (extend tests/data)"]
    if base in checks and (not isinstance(value, checks[base]) or (base != "boolean_t" and isinstance(value, bool))):
        return [f"{where} must be {base}, got {value!r}"]
    if "enum" in attr and str(value) not in attr["enum"]:
        return [f"{where}={value!r} is not one of {attr['enum']}"]
    return []


def test_every_record_is_a_valid_ocsf_api_activity_with_the_ai_operation_profile(store: AuditStore) -> None:
    events = [json.loads(line) for line in export_lines(store, "ocsf")]
    assert len(events) == 32
    for event in events:
        profiles = set(event["metadata"].get("profiles", []))
        assert {"ai_operation", "security_control"} <= profiles
        assert event["class_uid"] == OCSF["class"]["uid"] == 6003
        assert ocsf_problems(event, OCSF["class"], "api_activity", profiles) == []


def test_the_ocsf_check_refuses_what_the_schema_refuses(store: AuditStore) -> None:
    event = json.loads(export_lines(store, "ocsf")[7])
    for name in ("src_endpoint", "metadata", "severity_id"):
        broken = {key: value for key, value in event.items() if key != name}
        assert ocsf_problems(broken, OCSF["class"], "api_activity", {"ai_operation"}) == [f"api_activity.{name} is required"]
    assert ocsf_problems({**event, "actor": {}}, OCSF["class"], "api_activity", set()) != []
    assert ocsf_problems({**event, "cloud_region": "x"}, OCSF["class"], "api_activity", set()) != []


def test_ocsf_maps_actor_tenant_decision_policy_and_approval(store: AuditStore) -> None:
    events = [json.loads(line) for line in export_lines(store, "ocsf", RecordFilter(tenant="acme"))]
    denied = next(e for e in events if e["activity_name"] == "tool.decided" and e["api"]["operation"] == "write_file")
    assert denied["actor"]["user"]["name"] == "alice" and denied["metadata"]["tenant_uid"] == "acme"
    assert (denied["action_id"], denied["disposition"]) == (2, "Blocked")
    assert denied["policy"]["uid"] == "writes-stay-in-workspace" and denied["policy"]["version"] == "v7"
    assert denied["authorizations"] == [{"decision": "deny", "policy": denied["policy"]}]
    assert denied["trace"] == {"uid": TRACE} and denied["message_context"]["uid"] == "s1"
    approved = [e for e in events if e["activity_name"] == "tool.decided" and e["api"]["operation"] == "patch"]
    assert [(e["action"], e["disposition"]) for e in approved] == [("Held for approval", "Delayed"),
                                                                   ("Allowed", "Approved")]
    assert approved[1]["policy"]["group"] == {"name": "leads"} and "carol" in approved[1]["status_detail"]
    usage = next(e for e in events if e["activity_name"] == "model.usage")
    assert usage["message_context"]["total_tokens"] == 150 and usage["actor"]["user"]["name"] == "alice"
    shadow = next(e for e in events if e["activity_name"] == "policy.shadow.disagreed")
    assert "shadow pack v8 would have denied terminal" in shadow["message"]


# --- CEF --------------------------------------------------------------------------------------------------------


def parse_cef(line: str) -> tuple[list[str], dict[str, str]]:
    """A strict CEF reader: seven header fields split on unescaped pipes, then key=value with escapes undone."""
    assert "\n" not in line and "\r" not in line
    header, rest, field, escaped = [], "", "", False
    for i, ch in enumerate(line):
        if escaped:
            field, escaped = field + ch, False
        elif ch == "\\":
            escaped = True
        elif ch == "|" and len(header) < 7:
            header.append(field)
            field = ""
            if len(header) == 7:
                rest = line[i + 1:]
                break
        else:
            field += ch
    assert len(header) == 7, line
    keys = list(re.finditer(r"(?:^| )([A-Za-z0-9]+)=", rest))
    for match in keys:  # every key=value separator is real: none of them is preceded by an escaping backslash
        assert not rest[:match.start(1)].endswith("\\")
    extension = {}
    for match, following in zip(keys, keys[1:] + [None]):
        raw = rest[match.end():following.start() if following else len(rest)]
        extension[match.group(1)] = re.sub(r"\\(.)", lambda m: {"n": "\n", "r": "\r"}.get(m.group(1), m.group(1)), raw)
    return header, extension


def test_cef_keeps_hostile_strings_inside_their_field(store: AuditStore) -> None:
    lines = export_lines(store, "cef", RecordFilter(tenant="acme"))
    parsed = [parse_cef(line) for line in lines]
    assert all(header[0] == "CEF:0" and header[1] == "Caduceus" for header, _ in parsed)
    requested = next(ext for header, ext in parsed if header[4] == "tool.requested" and ext["cs4"] == "terminal")
    assert json.loads(requested["flexString1"]) == {"command": f"echo {HOSTILE}"}
    assert requested["suser"] == "alice" and requested["cs1"] == "acme" and "act" not in requested
    turn_header, _ = next(p for p in parsed if p[0][4] == "turn.requested")
    assert HOSTILE.replace("\n", " ") in turn_header[5]  # the name header field holds the whole text, pipes escaped
    denied_header, denied = next(p for p in parsed if p[0][4] == "tool.decided.deny")
    assert denied_header[6] == "6" and denied["act"] == "deny" and denied["cs5"] == "writes-stay-in-workspace"


# --- syslog -----------------------------------------------------------------------------------------------------

RFC5424 = re.compile(r"^<(\d{1,3})>1 (\S+) (\S+) (\S+) (\S+) (\S+) \[caduceus@32473((?: [a-z_]+=\"(?:[^\"\\\]]|\\.)*\")+)\] "
                     r"\ufeff(.*)$", re.DOTALL)


def parse_syslog(message: str) -> dict[str, Any]:
    match = RFC5424.match(message)
    assert match, message
    pri, timestamp, host, app, procid, msgid, data, text = match.groups()
    params = {name: re.sub(r"\\(.)", r"\1", value)
              for name, value in re.findall(r' ([a-z_]+)="((?:[^"\\\]]|\\.)*)"', data)}
    return {"pri": int(pri), "timestamp": timestamp, "host": host, "app": app, "msgid": msgid, "params": params,
            "text": text}


class Collector:
    """Real syslog listeners on loopback: UDP datagrams, and TCP with octet-counting framing."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.arrived = threading.Condition()
        collector = self

        class Udp(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                collector.add(self.request[0].decode("utf-8"))

        class Tcp(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                while True:
                    length = b""
                    while (ch := self.rfile.read(1)) not in (b" ", b""):
                        length += ch
                    if not length:
                        return
                    collector.add(self.rfile.read(int(length)).decode("utf-8"))

        self.udp = socketserver.ThreadingUDPServer(("127.0.0.1", 0), Udp)
        self.tcp = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Tcp)
        self.tcp.daemon_threads = True
        for server in (self.udp, self.tcp):
            threading.Thread(target=server.serve_forever, daemon=True).start()

    def add(self, message: str) -> None:
        with self.arrived:
            self.messages.append(message)
            self.arrived.notify_all()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[str]:
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.messages) >= count, timeout), self.messages
            return list(self.messages)

    def close(self) -> None:
        for server in (self.udp, self.tcp):
            server.shutdown()
            server.server_close()


@pytest.fixture()
def collector() -> Iterator[Collector]:
    listening = Collector()
    yield listening
    listening.close()


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_syslog_reaches_a_real_listener_with_fields_intact(store: AuditStore, collector: Collector,
                                                           transport: str) -> None:
    port = (collector.udp if transport == "udp" else collector.tcp).server_address[1]
    run = Export(store, RecordFilter(tenant="acme"), Formatter("syslog", hostname="audit-host"),
                 SyslogSink(f"{transport}://127.0.0.1:{port}"))
    assert run.catch_up() == 17
    run.finish()
    received = [parse_syslog(m) for m in collector.wait_for(17)]
    assert {(m["app"], m["host"]) for m in received} == {("caduceus-audit", "audit-host")}
    by_kind = {}
    for message in received:
        by_kind.setdefault(message["msgid"], []).append(message)
    denied = next(m for m in by_kind["tool.decided"] if m["params"]["verdict"] == "deny")
    assert denied["pri"] == 13 * 8 + 4 and denied["params"]["policy"] == "writes-stay-in-workspace"
    turn = by_kind["turn.requested"][0]
    assert turn["params"]["user"] == "alice" and turn["params"]["trace"] == TRACE
    assert HOSTILE.split("\n")[0] in turn["text"]  # brackets and quotes in the message do not end the SD block


def test_follow_mode_delivers_records_appended_after_it_started(tmp_path: Path, collector: Collector) -> None:
    store = AuditStore(f"sqlite:///{tmp_path}/audit.db")
    record_published(store, governed_session("acme", "s1")[:5])
    run = Export(store, RecordFilter(tenant="acme"), Formatter("syslog"),
                 SyslogSink(f"tcp://127.0.0.1:{collector.tcp.server_address[1]}"))
    stop = threading.Event()
    following = threading.Thread(target=run.follow, args=(stop, 0.05))
    following.start()
    try:
        collector.wait_for(5)
        record_published(store, governed_session("acme", "s1")[5:])
        later = collector.wait_for(15)
    finally:
        stop.set()
        following.join(10)
        run.finish()
    assert [parse_syslog(m)["params"]["seq"] for m in later] == [str(n) for n in range(1, 16)]


def test_an_unreachable_syslog_collector_is_an_error_naming_it(store: AuditStore) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens here once closed
    run = Export(store, RecordFilter(), Formatter("syslog"), SyslogSink(f"tcp://127.0.0.1:{port}"))
    with pytest.raises(DeliveryError, match=f"tcp://127.0.0.1:{port}"):
        run.catch_up()


# --- JSONL and filters ------------------------------------------------------------------------------------------


def test_jsonl_carries_every_chained_field_and_filters_by_tenant_session_and_time(store: AuditStore) -> None:
    everything = [json.loads(line) for line in export_lines(store, "jsonl")]
    stored = {(r.tenant, r.seq): r for r in store.records()}
    assert len(everything) == len(stored) == 32
    for line in everything:
        record = stored[(line["tenant"], line["seq"])]
        assert (line["hash"], line["prev_hash"], line["event_id"]) == (record.hash, record.prev_hash, record.event_id)
        assert line["body"] == json.loads(record.body)
    assert "eyJ.secret.token" not in json.dumps(everything)  # the chat token never leaves redacted
    globex = [json.loads(line) for line in export_lines(store, "jsonl", RecordFilter(session_id="s2"))]
    assert {line["tenant"] for line in globex} == {"globex"} and len(globex) == 15
    first_hour = RecordFilter(since=STORY_START, until=STORY_START + timedelta(minutes=30))
    assert {json.loads(line)["tenant"] for line in export_lines(store, "jsonl", first_hour)} == {"acme"}


# --- OpenTelemetry ----------------------------------------------------------------------------------------------


def test_each_tool_call_becomes_an_execute_tool_span_with_its_guardrail_decisions(store: AuditStore) -> None:
    builder, narrator, spans = SpanBuilder(), Narrator(), []
    for row in store.stream(RecordFilter(tenant="acme")):
        spans += builder.feed(narrator.view(row))
    spans += builder.flush()
    tools = {s.attributes["gen_ai.tool.name"]: s for s in spans if s.name.startswith("execute_tool")}
    assert set(tools) == {"terminal", "write_file", "patch"}
    assert all(s.context.trace_id == int(TRACE, 16) for s in spans)
    terminal = tools["terminal"]
    assert terminal.name == "execute_tool terminal" and terminal.attributes["gen_ai.operation.name"] == "execute_tool"
    assert terminal.attributes["gen_ai.tool.call.id"] == "s1-call1" and terminal.status.status_code is StatusCode.OK
    assert (terminal.end_time - terminal.start_time) == 3_000_000_000  # requested at 09:00:02, completed at 09:00:05
    assert tools["write_file"].status.status_code is StatusCode.ERROR
    assert tools["write_file"].attributes["error.type"] == "denied"
    assert len(spans) == 3, "decisions are events on their call's span, not spans of their own"
    decisions = [(tool, event.name, event.attributes["gen_ai.evaluation.name"],
                  event.attributes["gen_ai.evaluation.score.label"])
                 for tool, span in tools.items() for event in span.events]
    assert sorted(decisions) == sorted([
        ("terminal", "gen_ai.evaluation.result", "caduceus-policy", "allow"),
        ("write_file", "gen_ai.evaluation.result", "caduceus-policy", "deny"),
        ("patch", "gen_ai.evaluation.result", "caduceus-policy", "approve"),
        ("patch", "gen_ai.evaluation.result", "caduceus-approval", "allow")])
    patch_events = tools["patch"].events
    assert [event.attributes["gen_ai.evaluation.name"] for event in patch_events] == ["caduceus-policy",
                                                                                      "caduceus-approval"]
    assert all(tools["patch"].start_time <= event.timestamp <= tools["patch"].end_time for event in patch_events)


def test_model_calls_are_in_the_timeline_and_ocsf_like_tool_decisions(tmp_path: Path) -> None:
    from caduceus_contracts import (
        ModelCallCompleted,
        ModelCallDecided,
        ModelCallRequested,
        ModelDecision,
        SessionGrant,
        SignedGrant,
        SignedModelDecision,
        Signer,
    )

    at = STORY_START + timedelta(minutes=5)
    grant = SignedGrant.issue(Signer.generate("identity"), SessionGrant(
        tenant="acme", workspace="default", user="alice", roles=("member",), channel="cli", session_id="s9",
        issued_at=at, expires_at=at + timedelta(hours=1)))
    digest = "ab" * 32
    events = [
        (subjects.model_requested("acme"), ModelCallRequested(
            tenant="acme", call_id="m1", grant=grant, workspace="default", session_id="s9", model="scripted",
            prompt="key AKIAIOSFODNN7EXAMPLE", prompt_digest=digest, estimated_tokens=6, occurred_at=at)),
        (subjects.model_decided("acme"), ModelCallDecided(
            tenant="acme", call_id="m1", workspace="default", occurred_at=at, decision=SignedModelDecision.issue(
                Signer.generate("policy"), ModelDecision(
                    tenant="acme", workspace="default", session_id="s9", call_id="m1", prompt_digest=digest,
                    verdict="deny", reason="over budget (tokens-per-person)", policy_ids=("budget:tokens-per-person",),
                    pack_version="v7", expires_at=at + timedelta(minutes=1))))),
        (subjects.model_completed("acme"), ModelCallCompleted(
            tenant="acme", call_id="m2", workspace="default", session_id="s9", user="alice", upstream="outside",
            status="upstream-failed", detail="HTTP 503", occurred_at=at)),
    ]
    store = AuditStore(f"sqlite:///{tmp_path}/audit.db")
    try:
        record_published(store, [Published(subject, event, {"Nats-Msg-Id": event.event_id})
                                 for subject, event in events])
        records = [json.loads(line) for line in export_lines(store, "ocsf")]
        raw = "\n".join(line for line in export_lines(store, "jsonl"))
    finally:
        store.close()
    requested, decided, completed = records
    assert requested["actor"]["user"]["name"] == "alice" and requested["activity_name"] == "model.requested"
    assert decided["api"]["operation"] == "model" and (decided["action_id"], decided["disposition"]) == (2, "Blocked")
    assert decided["policy"]["uid"] == "budget:tokens-per-person" and "over budget" in decided["message"]
    assert decided["actor"]["user"]["name"] == "alice"  # known from the request, as for a tool call
    assert "upstream-failed" in completed["message"] and completed["severity"] == "Medium"
    for event in records:
        assert ocsf_problems(event, OCSF["class"], "api_activity", set(event["metadata"]["profiles"])) == []
    assert "AKIAIOSFODNN7EXAMPLE" not in raw and "key [REDACTED:aws_access_key]" in raw  # stored redacted


def test_a_turn_stopped_by_a_guardrail_is_a_denial_in_the_timeline_and_ocsf(tmp_path: Path) -> None:
    from caduceus_contracts import TurnStopped

    at = STORY_START + timedelta(minutes=7)
    stopped = TurnStopped(tenant="acme", turn_id="g1", workspace="default", session_id="s1", user="alice",
                          limit="tool_calls", guardrail="acme-turns", call_id="c13", tool="terminal", tool_calls=12,
                          model_calls=13, tokens=900, occurred_at=at,
                          reason="this turn was stopped: 12 tool calls is the limit per turn for acme. Send a new "
                                 "message to go on.")
    store = AuditStore(f"sqlite:///{tmp_path}/audit.db")
    try:
        record_published(store, [Published(subjects.turn_stopped("acme"), stopped,
                                           {"Nats-Msg-Id": stopped.event_id})])
        [record] = list(store.records(tenant="acme"))
        view = Narrator().view(record)
        [event] = [json.loads(line) for line in export_lines(store, "ocsf")]
    finally:
        store.close()
    assert view.severity == "warning" and view.actor is not None and view.actor.user == "alice"
    assert view.summary.startswith("policy stopped alice's turn at guardrail:acme-turns:tool_calls (12 tool calls")
    assert "12 tool calls is the limit per turn for acme" in view.summary
    assert (event["activity_name"], event["action_id"], event["disposition"]) == ("turn.stopped", 2, "Blocked")
    assert event["policy"]["uid"] == "guardrail:acme-turns:tool_calls"
    assert event["src_endpoint"]["name"] == "policy" and event["actor"]["user"]["name"] == "alice"
    assert ocsf_problems(event, OCSF["class"], "api_activity", set(event["metadata"]["profiles"])) == []
