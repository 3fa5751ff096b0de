"""The tenants file and admission of a verified person: pure domain, no servers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path

import pytest

from caduceus_contracts import ChatMessageIn
from caduceus_directory import DirectoryError, DirectorySource, load_directory
from caduceus_oidc import Refused, VerifiedIdentity

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def identity(user: str = "alice", tenant: str = "acme", groups: tuple[str, ...] = (), email: str | None = None,
             email_verified: bool = False) -> VerifiedIdentity:
    return VerifiedIdentity(subject=user, tenant=tenant, groups=groups, email=email, issuer="http://issuer",
                            expires_at=NOW + timedelta(hours=1), email_verified=email_verified)


def message(tenant: str = "acme", workspace: str = "default", channel: str = "cli") -> ChatMessageIn:
    return ChatMessageIn(tenant=tenant, session_id="s1", workspace=workspace, channel=channel, token="t",
                         text="hello")


def grant_for(tenants_file: Path, who: VerifiedIdentity, to: ChatMessageIn | None = None):
    return load_directory(tenants_file).admit(who, to or message(who.tenant), now=NOW, ttl=timedelta(minutes=10))


def test_shipped_default_has_the_demo_identities() -> None:
    with resources.as_file(resources.files("caduceus_embedded") / "defaults" / "tenants.yaml") as path:
        directory = load_directory(path)
    acme = directory.tenant("acme")
    assert acme.display_name == "Acme Corp"
    assert acme.workspaces == ("default",)
    assert {name: user.roles for name, user in acme.users.items()} == {
        "alice": ("member",), "bob": ("member",), "carol": ("admin",)}
    assert acme.users["carol"].email == "carol@acme.example"


def test_missing_file_says_where_to_point_the_setting(tmp_path: Path) -> None:
    with pytest.raises(DirectoryError) as refused:
        load_directory(tmp_path / "nowhere.yaml")
    assert "nowhere.yaml does not exist" in str(refused.value)
    assert "CADUCEUS_TENANTS_FILE" in str(refused.value)


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "tenants.yaml"
    path.write_text("tenants:\n  acme:\n    display_name: [unclosed\n")
    with pytest.raises(DirectoryError) as refused:
        load_directory(path)
    assert str(path) in str(refused.value)
    assert "not valid YAML at line" in str(refused.value)


def test_misspelled_key_is_pointed_at(tmp_path: Path) -> None:
    path = tmp_path / "tenants.yaml"
    path.write_text("tenants:\n  acme:\n    display_name: Acme\n    user:\n      alice: {email: a@acme.example}\n")
    with pytest.raises(DirectoryError) as refused:
        load_directory(path)
    text = str(refused.value)
    assert str(path) in text
    assert "tenants.acme.user: unknown key" in text


def test_tenant_name_that_could_break_subjects_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tenants.yaml"
    path.write_text("tenants:\n  'acme.*':\n    display_name: Acme\n")
    with pytest.raises(DirectoryError) as refused:
        load_directory(path)
    assert "'acme.*' is not a valid name" in str(refused.value)


def test_empty_file_shows_the_expected_shape(tmp_path: Path) -> None:
    path = tmp_path / "tenants.yaml"
    path.write_text("")
    with pytest.raises(DirectoryError) as refused:
        load_directory(path)
    assert "is empty" in str(refused.value)
    assert "display_name: Acme Corp" in str(refused.value)


def test_admitted_person_gets_directory_roles_with_the_tiers_below(tenants_file: Path) -> None:
    grant = grant_for(tenants_file, identity("carol", groups=("superuser", "admin")))
    assert (grant.tenant, grant.workspace, grant.user) == ("acme", "default", "carol")
    assert grant.roles == ("admin", "member", "guest")
    assert grant.expires_at - grant.issued_at == timedelta(minutes=10)
    assert grant.session_id == "s1"


def test_a_group_the_tenant_maps_adds_its_roles(tenants_file: Path) -> None:
    assert grant_for(tenants_file, identity("alice")).roles == ("member", "guest")
    assert grant_for(tenants_file, identity("alice", groups=("acme-admins",))).roles == ("admin", "member", "guest")


def test_a_person_not_listed_is_admitted_by_a_mapped_group_only(tenants_file: Path) -> None:
    grant = grant_for(tenants_file, identity("frank@acme.example", groups=("acme-staff", "golfers")))
    assert (grant.user, grant.roles) == ("frank@acme.example", ("member", "guest"))
    with pytest.raises(Refused, match="'frank' is not a member of tenant 'acme'"):
        grant_for(tenants_file, identity("frank", groups=("golfers",)))


def test_custom_roles_include_what_they_declare(tenants_file: Path) -> None:
    grant = grant_for(tenants_file, identity("dave", "globex"))
    assert grant.roles == ("member", "guest", "researcher")


def test_approval_mode_comes_from_the_user_else_the_tenant(tenants_file: Path) -> None:
    assert grant_for(tenants_file, identity("dave", "globex")).approval_mode == "ask-when-risky"
    assert grant_for(tenants_file, identity("erin", "globex")).approval_mode == "always-ask"
    assert grant_for(tenants_file, identity("alice")).approval_mode is None


def test_memory_scope_is_the_tenants_choice(tenants_file: Path) -> None:
    assert grant_for(tenants_file, identity("alice"), message(channel="dm-alice")).memory_scope == "user:alice"
    globex = grant_for(tenants_file, identity("dave", "globex"), message("globex", channel="general"))
    assert globex.memory_scope == "channel:general"


def test_with_per_user_memory_a_shared_channel_keeps_its_own_so_it_never_reaches_a_dm(tenants_file: Path) -> None:
    scopes = {channel: grant_for(tenants_file, identity("alice"), message(channel=channel)).memory_scope
              for channel in ("cli", "web:alice", "dm:slack:T1:U1", "channel:slack:T1:C1", "channel:slack:T1:C2")}
    assert scopes["cli"] == scopes["web:alice"] == scopes["dm:slack:T1:U1"] == "user:alice"
    assert scopes["channel:slack:T1:C1"] == "user:alice@channel:slack:T1:C1"
    assert len({scopes["cli"], scopes["channel:slack:T1:C1"], scopes["channel:slack:T1:C2"]}) == 3


def test_a_verified_email_names_a_listed_user(tenants_file: Path) -> None:
    grant = grant_for(tenants_file, identity("00u1a2b3", email="Bob@acme.example", email_verified=True))
    assert grant.user == "bob"
    with pytest.raises(Refused, match="not a member"):
        grant_for(tenants_file, identity("00u1a2b3", email="bob@acme.example", email_verified=False))
    with pytest.raises(Refused, match="not a member"):
        grant_for(tenants_file, identity("bob@acme.example", email_verified=False))


def test_an_unknown_role_is_refused_naming_the_entry(tmp_path: Path) -> None:
    path = tmp_path / "tenants.yaml"
    path.write_text("tenants:\n  acme:\n    display_name: Acme\n    users:\n"
                    "      alice: {email: a@acme.example, roles: [memebr]}\n")
    with pytest.raises(DirectoryError, match="user 'alice' has unknown role\\(s\\) \\['memebr'\\]"):
        load_directory(path)


def test_every_problem_is_reported_at_once_with_its_line_even_roles_of_a_tenant_with_other_problems(
        tmp_path: Path) -> None:
    path = tmp_path / "tenants.yaml"
    path.write_text("tenants:\n  acme:\n    display_name: Acme\n    memory: everyone\n    users:\n"
                    "      alice: {email: a@acme.example, roles: [memebr]}\n      bob: {email: b@acme.example, "
                    "roles: [boss]}\n")
    with pytest.raises(DirectoryError) as refused:
        load_directory(path)
    assert [str(problem) for problem in refused.value.problems] == [
        "line 4: tenants.acme.memory: 'everyone' is not allowed: 'tenant', 'user' or 'channel'",
        "line 6: tenants.acme.users.alice.roles: user 'alice' has unknown role(s) ['memebr']: use a tier (owner, "
        "admin, member, guest) or declare it under the tenant's `roles:`",
        "line 7: tenants.acme.users.bob.roles: user 'bob' has unknown role(s) ['boss']: use a tier (owner, admin, "
        "member, guest) or declare it under the tenant's `roles:`"]


def test_an_unknown_memory_scope_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tenants.yaml"
    path.write_text("tenants:\n  acme:\n    display_name: Acme\n    memory: everyone\n")
    with pytest.raises(DirectoryError, match="tenants.acme.memory: 'everyone' is not allowed"):
        load_directory(path)


def test_an_edited_tenants_file_is_read_again_and_a_broken_edit_is_ignored(tenants_file: Path) -> None:
    source = DirectorySource(tenants_file)
    assert "zed" not in source().tenant("acme").users
    text = tenants_file.read_text().replace("      carol:", "      zed: {email: zed@acme.example}\n      carol:")
    tenants_file.write_text(text)
    assert "zed" in source().tenant("acme").users
    tenants_file.write_text("tenants: [broken\n")
    assert "zed" in source().tenant("acme").users
    assert source.rejected is not None and "not valid YAML" in source.rejected


def test_token_for_another_tenant_is_refused(tenants_file: Path) -> None:
    with pytest.raises(Refused) as refused:
        load_directory(tenants_file).admit(identity("dave", "globex"), message("acme"), now=NOW,
                                           ttl=timedelta(minutes=10))
    assert refused.value.reason == "token is for tenant 'globex', but the message was sent to tenant 'acme'"


def test_unknown_tenant_is_refused(tenants_file: Path) -> None:
    with pytest.raises(Refused) as refused:
        load_directory(tenants_file).admit(identity("x", "initech"), message("initech"), now=NOW,
                                           ttl=timedelta(minutes=10))
    assert refused.value.reason == "unknown tenant 'initech'"
    assert "tenants.yaml" in refused.value.reply_text


def test_stranger_is_refused(tenants_file: Path) -> None:
    with pytest.raises(Refused) as refused:
        load_directory(tenants_file).admit(identity("mallory"), message(), now=NOW, ttl=timedelta(minutes=10))
    assert refused.value.reason == "user 'mallory' is not a member of tenant 'acme'"


def test_workspace_of_no_tenant_is_refused(tenants_file: Path) -> None:
    with pytest.raises(Refused) as refused:
        load_directory(tenants_file).admit(identity(), message(workspace="research"), now=NOW,
                                           ttl=timedelta(minutes=10))
    assert refused.value.reason == "workspace 'research' is not one of tenant 'acme''s workspaces (default)"


def test_a_chat_message_cannot_take_the_mcp_endpoints_channel(tenants_file: Path) -> None:
    # grants on that channel are an outside MCP client's, which turn guardrails do not count
    with pytest.raises(Refused) as refused:
        grant_for(tenants_file, identity("alice"), message(channel="mcp"))
    assert "reserved for the MCP endpoint" in str(refused.value)
