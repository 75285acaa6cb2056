"""The layers import in one direction: models know nothing of data, data nothing of models, stages or eval; the
model/data contract between them reaches no model or data code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "medgpt_oss"
FORBIDDEN = {"models": ("medgpt_oss.data",), "data": ("medgpt_oss.models", "medgpt_oss.stages", "medgpt_oss.eval")}
# All that contract.py reaches, import by import: it finds a weights folder and loads a tokenizer (two leaf modules
# of models/ that build nothing), so it computes the contract without building or importing the model.
CONTRACT_REACHES = {"medgpt_oss.contract", "medgpt_oss.harmony", "medgpt_oss.models.hub", "medgpt_oss.models.tokenizer"}


def imports(path: Path) -> list[tuple[int, str]]:
    """Every module a file imports, at any depth (function-level imports included)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.lineno, node.module))
    return found


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_layer_imports_nothing_it_must_not(layer):
    crossings = [f"{path.relative_to(SRC)}:{line} imports {module}"
                 for path in sorted((SRC / layer).rglob("*.py")) for line, module in imports(path)
                 if module.startswith(FORBIDDEN[layer])]
    assert not crossings, "\n".join(crossings)


def test_the_check_sees_function_level_imports(tmp_path):
    sample = tmp_path / "m.py"
    sample.write_text("def f():\n    from medgpt_oss.data.images import ImageTransform\n")
    assert imports(sample) == [(2, "medgpt_oss.data.images")]


def module_file(module: str) -> Path | None:
    path = SRC.parent / module.replace(".", "/")
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def test_the_contract_reaches_no_model_or_data_code():
    reached, todo = set(), ["medgpt_oss.contract"]
    while todo:
        module = todo.pop()
        reached.add(module)
        for _, name in imports(module_file(module)):
            if name.startswith("medgpt_oss.") and module_file(name) and name not in reached:
                todo.append(name)
    assert reached == CONTRACT_REACHES
