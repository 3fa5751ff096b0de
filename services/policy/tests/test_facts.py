"""Where a path argument lands, relative to the workspace the executor will use."""

from __future__ import annotations

from pathlib import PurePosixPath

import pytest

from caduceus_policy.facts import extract_facts, is_outside_workspace

ROOT = PurePosixPath("/srv/caduceus/workspaces/acme/default")


@pytest.mark.parametrize(
    ("path", "outside"),
    [
        ("./ok.txt", False),
        ("ok.txt", False),
        ("sub/dir/file.py", False),
        ("sub/../ok.txt", False),
        ("", False),
        (".", False),
        (str(ROOT / "notes.md"), False),
        (str(ROOT), False),
        ("../../etc/passwd", True),
        ("../x", True),
        ("sub/../../x", True),
        ("/etc/x", True),
        ("/etc/caduceus-demo.txt", True),
        (str(ROOT) + "/../other/x", True),
        ("/srv/caduceus/workspaces/acme/default-evil/x", True),
        ("/srv/caduceus/workspaces/acme", True),
        ("//etc/passwd", True),
        ("~/.bashrc", True),
        ("~", True),
        ("ok\x00.txt", True),
    ],
)
def test_path_resolution_decides_whether_a_path_leaves_the_workspace(path: str, outside: bool) -> None:
    assert is_outside_workspace(path, ROOT) is outside


@pytest.mark.parametrize("path", [None, 42, ["ok.txt"], {"p": "ok.txt"}])
def test_a_path_that_is_not_text_counts_as_outside(path: object) -> None:
    assert is_outside_workspace(path, ROOT) is True


def test_a_workspace_root_with_dots_is_normalized_first() -> None:
    assert is_outside_workspace("ok.txt", PurePosixPath("/srv/x/../workspaces/acme/default")) is False
    assert is_outside_workspace("/srv/workspaces/acme/default/ok.txt",
                                PurePosixPath("/srv/x/../workspaces/acme/default")) is False


def test_a_call_without_a_path_is_not_outside() -> None:
    assert extract_facts({"command": "ls /"}, ROOT) == {"path_outside_workspace": False, "destructive_command": False}


def test_any_file_of_a_v4a_patch_outside_the_workspace_makes_the_patch_outside() -> None:
    patch = (
        "*** Begin Patch\n*** Update File: src/app.py\n@@\n-a\n+b\n"
        "*** Add File: ../../etc/cron.d/evil\n+* * * * * root sh\n*** End Patch\n"
    )
    assert extract_facts({"mode": "patch", "patch": patch}, ROOT)["path_outside_workspace"] is True
    inside = "*** Begin Patch\n*** Update File: src/app.py\n@@\n-a\n+b\n*** End Patch\n"
    assert extract_facts({"mode": "patch", "patch": inside}, ROOT)["path_outside_workspace"] is False


def test_a_v4a_move_out_of_the_workspace_is_outside() -> None:
    patch = "*** Begin Patch\n*** Update File: a.txt\n*** Move to: /tmp/a.txt\n@@\n-a\n+b\n*** End Patch\n"
    assert extract_facts({"mode": "patch", "patch": patch}, ROOT)["path_outside_workspace"] is True
