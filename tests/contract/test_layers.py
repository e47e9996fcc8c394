"""The layering rules, checked on the source: data flows one way, and the online side never imports torch.

contract → (nothing of ours); training → contract; export → training, contract; app → contract.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ALLOWED = {
    "contract": {"contract"},
    "training": {"contract", "training"},
    "export": {"contract", "training", "export"},
    "app": {"contract", "app"},
}
OURS = set(ALLOWED) | {"xrec", "bench", "tests", "scripts"}
NEVER_ONLINE = {"torch", "transformers", "peft", "implicit", "matplotlib", "onnx"}


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, top-level package) of every import in a file, including those inside functions."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name.split(".")[0]) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module.split(".")[0]))
    return out


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_packages_import_only_what_they_may(package: str) -> None:
    wrong = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, top in imports_of(path):
            if top in OURS and top not in ALLOWED[package]:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: imports {top}")
            if package in ("app", "contract") and top in NEVER_ONLINE:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: imports {top} (the online side never does)")
    assert not wrong, "\n".join(wrong)


def test_the_walk_sees_imports_inside_functions(tmp_path: Path) -> None:
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from app.main import create_app\n    import torch.nn\n")
    assert imports_of(f) == [(2, "app"), (3, "torch")]
