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


def module_files() -> dict[str, Path]:
    """Every module of the CLI, the libs and the services, by dotted name (a package by its `__init__`)."""
    found = {}
    for package in [ROOT / "src" / "caduceus", *ROOT.glob("libs/*/src/caduceus_*"), *SERVICES.values()]:
        for path in package.rglob("*.py"):
            parts = path.relative_to(package.parent).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def test_no_two_modules_import_each_other_even_inside_a_function() -> None:
    modules = module_files()
    imports: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imports[name] |= {alias.name for alias in node.names if alias.name in modules}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in modules:
                imports[name] |= {f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules
                                  else node.module for alias in node.names}
    cycles = []
    for start in sorted(modules):
        path, seen = [start], {start}
        stack = [iter(sorted(imports[start]))]
        while stack:
            following = next(stack[-1], None)
            if following is None:
                stack.pop()
                path.pop()
            elif following == start:
                cycles.append(" -> ".join([*path, start]))
            elif following not in seen:
                seen.add(following)
                path.append(following)
                stack.append(iter(sorted(imports[following])))
    assert not cycles, "modules that import each other (move what both need to where neither imports):\n" + "\n".join(
        sorted(set(cycles)))
