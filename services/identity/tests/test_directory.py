"""The tenants file and admission of a verified person: pure domain, no servers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path

import pytest

from caduceus_contracts import ChatMessageIn
from caduceus_identity.adapters.tenants_file import load_directory
from caduceus_identity.domain import DirectoryError, Refused, VerifiedIdentity

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def identity(user: str = "alice", tenant: str = "acme", roles: tuple[str, ...] = ("member",)) -> VerifiedIdentity:
    return VerifiedIdentity(subject=user, tenant=tenant, roles=roles, email=None, issuer="http://issuer",
                            expires_at=NOW + timedelta(hours=1))


def message(tenant: str = "acme", workspace: str = "default") -> ChatMessageIn:
    return ChatMessageIn(tenant=tenant, session_id="s1", workspace=workspace, channel="cli", token="t",
                         text="hello")


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


def test_admitted_person_gets_directory_roles_not_token_roles(tenants_file: Path) -> None:
    directory = load_directory(tenants_file)
    grant = directory.admit(identity("carol", roles=("superuser",)), message(), now=NOW, ttl=timedelta(minutes=10))
    assert (grant.tenant, grant.workspace, grant.user, grant.roles) == ("acme", "default", "carol", ("admin",))
    assert grant.expires_at - grant.issued_at == timedelta(minutes=10)
    assert grant.session_id == "s1"


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
