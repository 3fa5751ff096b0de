"""Package boundaries, read from the source (AST, no imports): services share code only through libs/, and the
CLI uses each service's public API (its package `__init__`), never a service's internals."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVICES = {package.name: package for package in ROOT.glob("services/*/src/caduceus_*") if package.is_dir()}


def imported_modules(package: Path) -> Iterator[tuple[str, int, str]]:
    """Every module an import statement in the package names: (file, line, module); relative imports are local."""
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                yield str(path.relative_to(ROOT)), node.lineno, name


def test_the_service_packages_are_found() -> None:
    assert {"caduceus_identity", "caduceus_policy", "caduceus_approval", "caduceus_broker", "caduceus_audit"} <= set(
        SERVICES)


def test_the_cli_imports_only_the_public_api_of_each_service() -> None:
    deep = [f"{file}:{line}: {module}" for file, line, module in imported_modules(ROOT / "src" / "caduceus")
            if module.partition(".")[0] in SERVICES and "." in module]
    assert not deep, ("the CLI imports a service's internals; export what it needs from the service package's "
                      "__init__.py and import it from there:\n" + "\n".join(deep))


def test_no_service_imports_another_service() -> None:
    crossing = [f"{file}:{line}: {module}" for name, package in SERVICES.items()
                for file, line, module in imported_modules(package)
                if module.partition(".")[0] in SERVICES and module.partition(".")[0] != name]
    assert not crossing, ("a service imports another service's package; what they share belongs in libs/:\n"
                          + "\n".join(crossing))


def test_no_lib_imports_a_service() -> None:
    reaching = [f"{file}:{line}: {module}" for package in ROOT.glob("libs/*/src/caduceus_*")
                for file, line, module in imported_modules(package) if module.partition(".")[0] in SERVICES]
    assert not reaching, "a lib imports a service; libs hold only what services share:\n" + "\n".join(reaching)
