"""Who may answer an approval, resolved from the decision's terms and the requester's tenant (no I/O)."""

from __future__ import annotations

from caduceus_approval.domain import Panel, human_duration, members, panel_for, unreachable_quorum
from caduceus_contracts import ApprovalTerms

ACME = {"alice": ("member",), "bob": ("member",), "carol": ("admin",), "dave": ("admin", "owner"), "olivia": ("owner",)}


def test_groups_roles_and_named_users_resolve_to_the_tenants_people() -> None:
    assert members(ACME, groups=("admin",)) == ("carol", "dave")
    assert members(ACME, groups=("acme-owners",), group_roles={"acme-owners": ("owner",)}) == ("dave", "olivia")
    assert members(ACME, roles=("owner",), names=("bob", "mallory")) == ("bob", "dave", "olivia")


def test_the_panel_holds_the_approvers_and_the_escalation_group() -> None:
    terms = ApprovalTerms(groups=("admin",), quorum=2, escalate_to=("owner",), self_approval=True)
    assert panel_for(terms, ACME) == Panel(approvers=("carol", "dave"), escalation=("dave", "olivia"), quorum=2,
                                           self_approval=True)


def test_a_quorum_nobody_can_reach_is_named_at_once() -> None:
    assert unreachable_quorum(Panel(approvers=("carol", "dave"), quorum=2), "alice") is None
    # The requester is on the panel but may not approve their own call, so only one approver is left.
    reason = unreachable_quorum(Panel(approvers=("carol", "dave"), quorum=2), "dave")
    assert reason is not None and "needs 2 approver(s) but only 1 may answer (carol" in reason
    assert unreachable_quorum(Panel(approvers=("carol", "dave"), quorum=2, self_approval=True), "dave") is None


def test_durations_read_like_people_say_them() -> None:
    assert [human_duration(s) for s in (40, 900, 7500, 7200)] == ["40 s", "15 min", "2 h 5 min", "2 h"]
