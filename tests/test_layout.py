"""The package's shape, as the README's layout table states it: layers that import only
downwards (import-linter's contract in pyproject.toml), every module in a layer, no module over
500 lines, no function over 80 and no command handler over 60."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "reef_forensics"
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
MAX_HANDLER_LINES = 60  # a command's handler: parse, call the library, print


def _contract() -> dict[str, object]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    (contract,) = config["tool"]["importlinter"]["contracts"]
    assert contract["type"] == "layers" and contract["containers"] == ["reef_forensics"]
    return dict(contract)


def _sources() -> list[Path]:
    return sorted([*PACKAGE.rglob("*.py"), *(ROOT / "plugins").glob("*.py")])


def test_the_layers_contract_holds() -> None:
    done = subprocess.run(
        [str(LINT_IMPORTS), str(ROOT / "pyproject.toml")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 kept, 0 broken" in done.stdout


def test_an_upward_import_breaks_the_contract(tmp_path: Path) -> None:
    """The same contract with two layers swapped: the real imports of the analysis layer
    (which uses the models layer for positive controls) must then be reported."""
    contract = _contract()
    layers = [str(layer) for layer in contract["layers"]]  # type: ignore[attr-defined]
    i, j = layers.index("analysis"), layers.index("models")
    layers[i], layers[j] = layers[j], layers[i]
    swapped = "\n".join(f'    "{layer}",' for layer in layers)
    config = tmp_path / "swapped.toml"
    config.write_text(
        '[tool.importlinter]\nroot_package = "reef_forensics"\n\n'
        "[[tool.importlinter.contracts]]\n"
        'name = "swapped"\ntype = "layers"\ncontainers = ["reef_forensics"]\n'
        f"layers = [\n{swapped}\n]\n",
        encoding="utf-8",
    )
    done = subprocess.run(
        [str(LINT_IMPORTS), str(config)], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode != 0
    assert "reef_forensics.analysis is not allowed to import reef_forensics.models" in done.stdout


def test_every_module_belongs_to_a_layer() -> None:
    listed = {
        name.strip()
        for layer in _contract()["layers"]  # type: ignore[attr-defined]
        for name in str(layer).split("|")
    }
    present = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    present |= {p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__")}
    assert present == listed, f"not in a layer: {present - listed}; gone: {listed - present}"


def _too_long(path: Path, root: Path = ROOT) -> list[str]:
    """What in ``path`` is over its limit: the module, and each function by name."""
    text = path.read_text(encoding="utf-8")
    where = path.relative_to(root)
    found = []
    if len(text.splitlines()) > MAX_MODULE_LINES:
        found.append(f"{where}: {len(text.splitlines())} lines")
    is_cli = path.parent.name == "cli"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            lines = (node.end_lineno or node.lineno) - node.lineno + 1
            handler = is_cli and node.name.startswith(("_cmd_", "cmd_"))
            limit = MAX_HANDLER_LINES if handler else MAX_FUNCTION_LINES
            if lines > limit:
                found.append(f"{where}:{node.lineno} {node.name}: {lines} lines (limit {limit})")
    return found


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_and_functions_stay_small(path: Path) -> None:
    assert _too_long(path) == []


def test_the_size_check_finds_a_long_function(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    module = tmp_path / "long.py"
    module.write_text(f"def long() -> None:\n{body}\n", encoding="utf-8")
    found = _too_long(module, tmp_path)
    assert found and "long: 81 lines" in found[0]
