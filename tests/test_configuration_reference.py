"""docs/configuration.md is generated from the settings models: it must match them, and every name an operator
reads in the deployment files or the README must be in it."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from typer.testing import CliRunner

from caduceus.cli import app
from caduceus.config_reference import SECTIONS, all_names, undocumented

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "configuration.md"
VARIABLE = re.compile(r"\bCADUCEUS_[A-Z0-9_]*[A-Z0-9]\b")


def test_the_committed_reference_matches_the_settings_models() -> None:
    result = CliRunner().invoke(app, ["config", "reference", "--check", str(REFERENCE)])
    assert result.exit_code == 0, f"{result.output}\nrun: caduceus config reference --write docs/configuration.md"


def test_a_stale_reference_fails_the_check(tmp_path: Path) -> None:
    stale = tmp_path / "configuration.md"
    stale.write_text(REFERENCE.read_text().replace("CADUCEUS_GRANT_TTL_S", "CADUCEUS_GRANT_TTL"))
    result = CliRunner().invoke(app, ["config", "reference", "--check", str(stale)])
    assert result.exit_code == 1 and "differs from the code" in result.output


def test_every_setting_says_what_it_means() -> None:
    assert undocumented() == [], "add Field(description=...) to these settings"


def test_every_settings_model_in_the_code_is_in_the_reference() -> None:
    declared = set()
    for source in [*ROOT.glob("libs/*/src/**/*.py"), *ROOT.glob("services/*/src/**/*.py"), *ROOT.glob("src/**/*.py")]:
        text = source.read_text()
        for match in re.finditer(r"^class (\w+)\(.*\):\n(?:(?:    .*)?\n)*?    model_config = SettingsConfigDict",
                                 text, re.MULTILINE):
            declared.add((source.resolve(), match.group(1)))
    documented = {(Path(inspect.getsourcefile(section.model)).resolve(), section.model.__name__)
                  for section in SECTIONS}
    assert len(declared) >= 9
    assert declared <= documented, f"settings missing from the reference: {sorted(declared - documented)}"


def test_every_variable_named_in_compose_infra_and_the_readme_is_in_the_reference() -> None:
    files = [ROOT / "docker-compose.yml", ROOT / "README.md",
             *[path for path in (ROOT / "infra").rglob("*") if path.is_file()]]
    named = {(name, str(path.relative_to(ROOT))) for path in files
             for name in VARIABLE.findall(path.read_text(errors="replace"))}
    known = all_names(app)
    unknown = sorted((name, where) for name, where in named if name not in known)
    assert len({name for name, _ in named}) > 20
    assert unknown == [], f"named but not a setting: {unknown}"
