"""Incident timelines: a session or a trace, in order, with each tool call's facts, decisions and result; and
the standalone HTML page, which shows hostile text as text."""

from __future__ import annotations

from pathlib import Path

from caduceus_audit import AuditStore
from caduceus_audit.adapters.store import RecordFilter
from caduceus_audit.domain.narrative import Narrator
from caduceus_audit.domain.timeline import build_timeline
from caduceus_audit.testing import governed_session, record_published
from caduceus_audit.timeline_html import render_html


def timeline_of(store: AuditStore, where: RecordFilter, title: str = "incident"):
    narrator = Narrator()
    return build_timeline(title, (narrator.view(row) for row in store.stream(where)))


def test_a_session_reads_as_who_said_what_and_each_call_with_its_decisions_and_result(tmp_path: Path) -> None:
    store = AuditStore(f"sqlite:///{tmp_path}/audit.db")
    record_published(store, governed_session("acme", "s1"))
    record_published(store, governed_session("acme", "s2", user="bob", trace_id="cd" * 16))
    timeline = timeline_of(store, RecordFilter(session_id="s1"))
    assert [m.kind for m in timeline.moments] == ["said", "said", "call", "call", "call", "replied"]
    assert timeline.sessions == {"s1"} and timeline.records == 15
    terminal, write, patch = timeline.calls
    assert terminal.asked_by is not None and terminal.asked_by.user == "alice"
    assert terminal.facts.args["command"].startswith("echo a|b=c") and terminal.facts.digest
    assert (terminal.final_verdict, terminal.dispatched_at is not None, terminal.status) == ("allow", True, "ok")
    assert (write.final_verdict, write.dispatched_at, write.status) == ("deny", None, "denied")
    assert write.decisions[0][1].policy_ids == ("writes-stay-in-workspace",)
    assert [(d.decided_by, d.verdict) for _, d in patch.decisions] == [("policy", "approve"), ("approval", "allow")]
    by_trace = timeline_of(store, RecordFilter(trace_id="cd" * 16))
    assert by_trace.sessions == {"s2"} and by_trace.calls[0].asked_by.user == "bob"


def test_the_html_page_is_standalone_and_shows_hostile_text_as_text(tmp_path: Path) -> None:
    store = AuditStore(f"sqlite:///{tmp_path}/audit.db")
    record_published(store, governed_session("acme", "s1"))
    page = render_html(timeline_of(store, RecordFilter(session_id="s1"), title="Session s1 <b>of</b> acme"))
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<title>Session s1 &lt;b&gt;of&lt;/b&gt; acme</title>" in page
    assert "src=" not in page and "href=" not in page  # nothing to fetch: it opens the same anywhere, offline
    for expected in ("alice (member)", "writes-stay-in-workspace", "approved by carol", "approvers leads",
                     "result <b>denied</b>", "dispatched to the executor"):
        assert expected in page


def test_approvals_and_what_the_person_was_told_are_part_of_the_sessions_story(tmp_path: Path) -> None:
    from datetime import timedelta

    from caduceus_audit.testing import Published
    from caduceus_contracts import ApprovalRequested, ApprovalResolved, ApprovalView, ApprovalVote, ChatNotice, subjects

    store = AuditStore(f"sqlite:///{tmp_path}/audit.db")
    story = governed_session("acme", "s1")
    patch = next(p.event for p in story if p.event.kind == "tool.requested" and p.event.tool == "patch")
    at = patch.occurred_at + timedelta(milliseconds=500)
    view = ApprovalView(workflow_id="approval-acme-x", tenant="acme", call_id=patch.call_id, workspace="default",
                        session_id="s1", tool="patch", args=patch.args, digest=patch.digest, requester="alice",
                        reason="patches need a lead", groups=("leads",), approvers=("carol",), quorum=1,
                        opened_at=at, expires_at=at + timedelta(minutes=15))
    done = view.model_copy(update={"status": "approved", "resolution": "approved by carol",
                                   "votes": (ApprovalVote(approver="carol", answer="approve", comment="fine", at=at),)})
    extra = [ApprovalRequested(tenant="acme", call_id=patch.call_id, approval=view, occurred_at=at),
             ChatNotice(tenant="acme", session_id="s1", call_id=patch.call_id, occurred_at=at,
                        text="waiting for approval from leads for patch, expires in 15 min"),
             ApprovalResolved(tenant="acme", call_id=patch.call_id, approval=done, occurred_at=at)]
    story += [Published(subjects.approval(e.kind.split(".")[1], "acme") if e.kind.startswith("approval")
                        else subjects.chat_notice("acme", "s1"), e, {"Nats-Msg-Id": e.event_id}) for e in extra]
    record_published(store, story)
    summaries = [m.summary for m in timeline_of(store, RecordFilter(session_id="s1")).moments]
    assert "approval of patch opened (asked of leads, quorum 1)" in summaries
    assert "alice was told: waiting for approval from leads for patch, expires in 15 min" in summaries
    assert "approval of patch approved: approved by carol (asked of leads, quorum 1): carol approved (fine)" in summaries
