"""The shape of the package: one import root in the wheel, imports in one direction (import-linter's
contracts in pyproject.toml, checked on the installed layout), and short functions.

The wheel is built once (``pip wheel --no-build-isolation``, a few seconds, nothing downloaded) and
unpacked; import-linter analyses that tree, because the source tree maps ``export/`` and ``devices/``
onto ``compress.export`` and ``compress.devices`` only when installed.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 80


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(ROOT),
                           "-w", str(out)], capture_output=True, text=True, timeout=600, cwd=out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (path,) = out.glob("compress-*.whl")
    return path


@pytest.fixture(scope="module")
def unpacked(wheel, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("site")
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(root)
    return root


def test_the_wheel_installs_one_import_root(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        top_level = next(n for n in names if n.endswith(".dist-info/top_level.txt"))
        assert zf.read(top_level).decode().split() == ["compress"]
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"compress"}
    for needed in ("compress/export/onnx/__init__.py", "compress/export/tflite/op_versions.json",
                   "compress/export/coreml/mil/evaluator.py", "compress/devices/profiles/pixel-class.toml",
                   "compress/export/onnx/emulated.py", "compress/devices/arm64_emu_child.py"):
        assert needed in names, needed


def _lint(site: Path) -> subprocess.CompletedProcess:
    lint = shutil.which("lint-imports") or pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    return subprocess.run([lint, str(ROOT / "pyproject.toml")], capture_output=True, text=True, timeout=300,
                          cwd=site, env={"PATH": str(Path(sys.executable).parent), "PYTHONPATH": str(site)})


def test_import_contracts_hold(unpacked):
    proc = _lint(unpacked)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "3 kept, 0 broken" in proc.stdout


@pytest.mark.parametrize("module, backwards_import", [
    ("compress/core/errors.py", "import compress.pipeline"),  # core must not import the pipeline
    ("compress/export/onnx/convert.py", "import compress.devices.profiles"),  # a target must not import devices
    ("compress/devices/budgets.py", "import compress.teachers"),  # devices must not import the training side
    ("compress/export/onnx/runner.py", "import compress.export.tflite.runner"),  # targets are independent
    ("compress/stages/validate.py", "import compress.export.tflite.compat"),  # only the registry names a target
])
def test_a_backwards_import_breaks_a_contract(unpacked, tmp_path, module, backwards_import):
    site = tmp_path / "site"
    shutil.copytree(unpacked / "compress", site / "compress")
    target = site / module
    target.write_text(target.read_text() + f"\n{backwards_import}  # planted by the test\n")
    proc = _lint(site)
    assert proc.returncode != 0 and "BROKEN" in proc.stdout, proc.stdout[-3000:]


def test_no_function_is_longer_than_80_lines():
    long = []
    for folder in ("compress", "export", "devices"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > MAX_FUNCTION_LINES:
                        long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long


def test_every_directly_imported_package_is_declared():
    import importlib.metadata as md
    import re
    import tomllib

    declared = {re.split(r"[<>=!~ \[;]", d, maxsplit=1)[0].lower().replace("_", "-")
                for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    providers = md.packages_distributions()
    imported = set()
    for folder in ("compress", "export", "devices"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    imported |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    imported.add(node.module.split(".")[0])
    third_party = sorted(m for m in imported - set(sys.stdlib_module_names) - {"compress"})
    missing = {m: providers.get(m) for m in third_party
               if not {d.lower().replace("_", "-") for d in providers.get(m, [m])} & declared}
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_every_registered_target_is_guarded_by_the_contracts():
    """The contracts name the target folders by hand (import-linter reads a static file): a target the registry
    holds but the contracts miss would be free to import another target, or be named by the pipeline."""
    import tomllib

    from compress.export.registry import TARGETS

    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    independent = next(c for c in contracts if c["type"] == "independence")["modules"]
    forbidden = next(c for c in contracts if c["type"] == "forbidden")["forbidden_modules"]
    folders = {p.parent.name for p in (ROOT / "export").glob("*/__init__.py")} - {"common"}
    assert set(TARGETS) == folders, (set(TARGETS), folders)  # one folder per registered target
    for name in folders:
        assert f"compress.export.{name}" in independent and f"compress.export.{name}" in forbidden, name


def _import_graph(site: Path) -> dict[str, set[str]]:
    """Module -> the modules of the package it imports, at module level or inside a function alike (an
    import moved into a function still makes the two modules depend on each other)."""
    modules = {}
    for path in (site / "compress").rglob("*.py"):
        parts = list(path.relative_to(site).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("compress"):
                found = [owner(f"{node.module}.{a.name}") for a in node.names]
            elif isinstance(node, ast.Import):
                found = [owner(a.name) for a in node.names if a.name.startswith("compress")]
            else:
                continue
            graph[name] |= {m for m in found if m and m != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[str]:
    """Every import cycle, once each (found from its alphabetically smallest module)."""
    cycles = []
    for start in sorted(graph):
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in sorted(graph[node]):
                if nxt == start:
                    cycles.append(" -> ".join(path + [start]))
                elif nxt not in seen and nxt > start:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
    return cycles


def test_no_two_modules_import_each_other(unpacked):
    """No import cycle between modules, function-level imports included: import-linter's layers allow cycles
    inside a layer, and a cycle closed by an import inside a function is still two modules that cannot be
    understood, or moved, one without the other."""
    cycles = _cycles(_import_graph(unpacked))
    assert not cycles, cycles[:10]


def test_the_cycle_check_finds_a_cycle_closed_inside_a_function(unpacked, tmp_path):
    site = tmp_path / "site"
    shutil.copytree(unpacked / "compress", site / "compress")
    target = site / "compress" / "models" / "scaling.py"
    target.write_text(target.read_text() + "\n\ndef _planted():\n    from compress.models import speech\n")
    assert "compress.models.scaling -> compress.models.speech -> compress.models.scaling" in _cycles(_import_graph(site))
