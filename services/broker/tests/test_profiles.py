"""Hermes homes the broker writes: a planner home per tenant/workspace, a home per memory scope inside it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from caduceus_broker.profiles import scope_home, write_profile


def test_each_memory_scope_gets_its_own_home_with_the_planners_config(tmp_path: Path) -> None:
    planner = write_profile(tmp_path / "planner-home")
    alice = scope_home(planner, "user:alice")
    general = scope_home(planner, "channel:general")
    tenant = scope_home(planner, "tenant")
    assert alice == planner / "memory-scopes" / "user" / "alice"
    assert general == planner / "memory-scopes" / "channel" / "general"
    assert tenant == planner / "memory-scopes" / "tenant"
    assert len({alice, general, tenant}) == 3
    config = yaml.safe_load((alice / "config.yaml").read_text())
    assert config["plugins"]["enabled"] == ["caduceus"] and config["memory"]["memory_enabled"] is True
    assert scope_home(planner, "user:alice") == alice  # the same scope, the same home, turn after turn


@pytest.mark.parametrize("name", ["../../etc", "a/b", ".hidden", "alice smith", "C0123/../x", "x" * 200])
def test_a_scope_name_never_leaves_the_scopes_directory(tmp_path: Path, name: str) -> None:
    planner = write_profile(tmp_path / "planner-home")
    home = scope_home(planner, f"channel:{name}")
    assert home.parent == planner / "memory-scopes" / "channel"
    assert home.name.startswith("~") and len(home.name) == 33
    assert scope_home(planner, f"user:{name}") != home


def test_a_malformed_scope_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a memory scope"):
        scope_home(write_profile(tmp_path / "planner-home"), "everyone")


@pytest.mark.parametrize("planted", ["file", "link", "directory"])
def test_a_config_planted_in_a_scope_is_replaced_by_the_planners_before_the_next_turn(tmp_path: Path,
                                                                                      planted: str) -> None:
    planner = write_profile(tmp_path / "planner-home")
    alice = scope_home(planner, "user:alice")
    evil = alice / "evil.yaml"
    evil.write_text(yaml.safe_dump({"plugins": {"enabled": []}}))
    (alice / "config.yaml").unlink()
    if planted == "file":
        (alice / "config.yaml").write_text(evil.read_text())
    elif planted == "link":
        (alice / "config.yaml").symlink_to(evil)
    else:
        (alice / "config.yaml").mkdir()
    scope_home(planner, "user:alice")
    assert (alice / "config.yaml").resolve() == (planner / "config.yaml").resolve()
    assert yaml.safe_load((alice / "config.yaml").read_text())["plugins"]["enabled"] == ["caduceus"]
