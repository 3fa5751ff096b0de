"""Where a path argument lands, relative to the workspace the executor will use: `..`, absolute paths, symlinks."""

from __future__ import annotations

import os
import posixpath
from pathlib import Path, PurePosixPath

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caduceus_policy.facts import HostPaths, Workspace, request_facts
from caduceus_policy.facts.paths import looks_secret

ROOT = PurePosixPath("/srv/caduceus/workspaces/acme/default")
WORKSPACE = Workspace.at(ROOT)


@pytest.mark.parametrize(
    ("path", "outside"),
    [
        ("./ok.txt", False), ("ok.txt", False), ("sub/dir/file.py", False), ("sub/../ok.txt", False), ("", False),
        (".", False), (str(ROOT / "notes.md"), False), (str(ROOT), False),
        ("../../etc/passwd", True), ("../x", True), ("sub/../../x", True), ("/etc/x", True),
        ("/etc/caduceus-demo.txt", True), (str(ROOT) + "/../other/x", True),
        ("/srv/caduceus/workspaces/acme/default-evil/x", True), ("/srv/caduceus/workspaces/acme", True),
        ("//etc/passwd", True), ("~/.bashrc", True), ("~", True), ("~root/x", True), ("ok\x00.txt", True),
        ("sub/./../../../../etc/shadow", True), ("a/b/c/../../../../x", True),
    ],
)
def test_path_resolution_decides_whether_a_path_leaves_the_workspace(path: str, outside: bool) -> None:
    assert WORKSPACE.check(path).outside is outside


@pytest.mark.parametrize("path", [None, 42, ["ok.txt"], {"p": "ok.txt"}])
def test_a_path_that_is_not_text_counts_as_outside(path: object) -> None:
    assert WORKSPACE.check(path).outside is True


def test_a_workspace_root_with_dots_is_normalized_first() -> None:
    workspace = Workspace.at(PurePosixPath("/srv/x/../workspaces/acme/default"))
    assert workspace.check("ok.txt").outside is False
    assert workspace.check("/srv/workspaces/acme/default/ok.txt").outside is False


@pytest.mark.parametrize(
    ("path", "secret"),
    [("~/.ssh/id_rsa", True), ("/home/a/.ssh/authorized_keys", True), ("keys/id_ed25519", True),
     ("/root/.aws/credentials", True), (".env", True), ("app/.env.production", True), (".env.example", False),
     ("/etc/shadow", True), ("/proc/self/environ", True), ("certs/server.key", True), ("~/.kube/config", True),
     ("/var/run/secrets/kubernetes.io/serviceaccount/token", True), ("~/.config/gcloud/credentials.db", True),
     ("id_rsa.pub", False), ("notes/environment.md", False), ("src/keys.py", False)],
)
def test_secret_files_are_recognized_wherever_they_are(path: str, secret: bool) -> None:
    assert looks_secret(path) is secret


def test_a_symlink_in_the_workspace_pointing_out_is_an_escape(tmp_path: Path) -> None:
    root = tmp_path / "workspaces" / "acme" / "default"
    (root / "sub").mkdir(parents=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    os.symlink(outside, root / "link")
    os.symlink("/etc", root / "sub" / "etc-link")
    host = Workspace.at(PurePosixPath(root), HostPaths())
    escape = host.check("link/secret.txt")
    assert (escape.outside, escape.via_symlink, escape.resolved) == (True, True, str(outside / "secret.txt"))
    assert host.check("sub/etc-link/passwd").outside is True
    # The kernel follows `link` before `..`: lexically this stays inside, really it does not.
    assert Workspace.at(PurePosixPath(root)).check("sub/etc-link/../x").outside is False
    assert host.check("sub/etc-link/../x").outside is True
    assert host.check("sub/ok.txt").outside is False


def test_a_symlink_escape_is_a_fact_of_a_write(tmp_path: Path) -> None:
    root = tmp_path / "acme" / "default"
    root.mkdir(parents=True)
    os.symlink("/etc", root / "cfg")
    facts = request_facts("acme", ("member",), "write_file", {"path": "cfg/cron.d/x", "content": "*"}, root,
                          resolver=HostPaths()).facts
    assert facts["path_symlink_escape"] and facts["writes_outside_workspace"]
    assert "/etc/cron.d/x" in facts["paths"]


def test_a_call_without_a_path_is_not_outside() -> None:
    assert request_facts("acme", (), "todo", {"todos": []}, ROOT).facts["path_outside_workspace"] is False


def test_any_file_of_a_v4a_patch_outside_the_workspace_makes_the_patch_write_outside() -> None:
    patch = (
        "*** Begin Patch\n*** Update File: src/app.py\n@@\n-a\n+b\n"
        "*** Add File: ../../etc/cron.d/evil\n+* * * * * root sh\n*** End Patch\n"
    )
    assert request_facts("acme", (), "patch", {"mode": "patch", "patch": patch}, ROOT).facts[
        "writes_outside_workspace"] is True
    inside = "*** Begin Patch\n*** Update File: src/app.py\n@@\n-a\n+b\n*** End Patch\n"
    assert request_facts("acme", (), "patch", {"mode": "patch", "patch": inside}, ROOT).facts[
        "writes_outside_workspace"] is False


def test_a_v4a_move_out_of_the_workspace_is_outside() -> None:
    patch = "*** Begin Patch\n*** Update File: a.txt\n*** Move to: /tmp/a.txt\n@@\n-a\n+b\n*** End Patch\n"
    assert request_facts("acme", (), "patch", {"mode": "patch", "patch": patch}, ROOT).facts[
        "path_outside_workspace"] is True


path_texts = st.lists(st.sampled_from(["", ".", "..", "a", "b", "ws", "default", "srv", "~", " x"]), max_size=6).map(
    "/".join)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(["/", "//", "/srv", "/srv/ws", "//srv/ws", "ws", ".", "a/../ws", str(ROOT)]),
       st.sampled_from(["", "/", "//", "///"]), path_texts)
def test_the_text_containment_check_agrees_with_path_arithmetic(root: str, lead: str, path: str) -> None:
    # Workspace.check decides containment on normalized text; the PurePosixPath parents test is the reference.
    workspace = Workspace.at(root)
    normalized = posixpath.normpath(posixpath.join(str(workspace.root), lead + path))
    assert str(PurePosixPath(normalized)) == normalized
    assert workspace._contains(normalized) is workspace.contains(PurePosixPath(normalized))


secret_path_parts = st.sampled_from([
    "/", "//", ".", "..", "~", "\n", "-", "ssh", ".ssh", ".SSH", "id_rsa", "ID_ED25519", "_sk", ".aws", "credentials",
    "config", ".config", "gcloud", "gh", "hosts.yml", "application_default_credentials.json", ".azure", ".kube",
    ".docker", "config.json", ".netrc", "_netrc", ".pgpass", ".git-credentials", ".npmrc", ".pypirc", ".vault-token",
    ".terraform.d", "credentials.tfrc.json", ".env", ".env.example", ".production", "x.pem", ".KEY", ".p12", ".pfx",
    ".jks", ".keystore", "etc", "shadow", "gshadow", "sudoers.d", "proc", "self", "12", "environ", "mem", "var",
    "run", "secrets", "src", "app.py", "notes", "\u212a", "\u017f", "\u0131",
])


@settings(max_examples=1500, deadline=None)
@given(st.lists(secret_path_parts, max_size=8).map("".join))
def test_the_secret_path_prefilter_never_hides_a_match(path: str) -> None:
    from caduceus_policy.facts.paths import _SECRET_PATH

    assert looks_secret(path) is bool(_SECRET_PATH.search(path))
