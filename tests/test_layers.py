"""The layers import in one direction: models know nothing of data, stages or eval, data nothing of models, stages
or eval; the model/data contract between them reaches no model or data code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "medgpt_oss"
FORBIDDEN = {"models": ("medgpt_oss.data", "medgpt_oss.stages", "medgpt_oss.eval"),
             "data": ("medgpt_oss.models", "medgpt_oss.stages", "medgpt_oss.eval")}
# All that contract.py reaches, import by import: it finds a weights folder and loads a tokenizer (two leaf modules
# of models/ that build nothing), so it computes the contract without building or importing the model.
CONTRACT_REACHES = {"medgpt_oss.contract", "medgpt_oss.harmony", "medgpt_oss.models.hub", "medgpt_oss.models.tokenizer"}
IMPORT_CALLS = {"import_module", "__import__"}  # importlib.import_module("medgpt_oss.x"), __import__("medgpt_oss.x")


def module_file(module: str) -> Path | None:
    path = SRC.parent / module.replace(".", "/")
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def package_of(path: Path) -> str:
    """The package a file of src/ is in (its own name for an ``__init__.py``), which relative imports start from."""
    return ".".join(path.resolve().relative_to(SRC.parent).parts[:-1])


def imports(path: Path, package: str | None = None) -> list[tuple[int, str]]:
    """Every module a file imports, at any depth (function-level imports included): ``import``, ``from ... import``
    (a submodule imported by name, ``from medgpt_oss import data``, counts as that submodule), relative imports
    resolved against ``package`` (default: the file's own), and modules named to ``importlib.import_module``."""
    package = package_of(path) if package is None else package
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(parent + ([base] if base else []))
            submodules = [f"{base}.{alias.name}" for alias in node.names if module_file(f"{base}.{alias.name}")]
            found += [(node.lineno, name) for name in submodules or [base]]
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", None)) in IMPORT_CALLS):
            found.append((node.lineno, node.args[0].value))
    return found


def within(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_layer_imports_nothing_it_must_not(layer):
    crossings = [f"{path.relative_to(SRC)}:{line} imports {module}"
                 for path in sorted((SRC / layer).rglob("*.py")) for line, module in imports(path)
                 if within(module, FORBIDDEN[layer])]
    assert not crossings, "\n".join(crossings)


@pytest.mark.parametrize(("code", "found"), [
    ("def f():\n    from medgpt_oss.data.images import ImageTransform\n", "medgpt_oss.data.images"),
    ("from medgpt_oss import data\n", "medgpt_oss.data"),
    ("from .. import stages\n", "medgpt_oss.stages"),
    ("from ..eval.metrics import exact_match\n", "medgpt_oss.eval.metrics"),
    ("from . import hub\n", "medgpt_oss.models.hub"),
    ("import importlib\nm = importlib.import_module('medgpt_oss.data.images')\n", "medgpt_oss.data.images"),
    ("from importlib import import_module\nm = import_module('medgpt_oss.stages.base')\n", "medgpt_oss.stages.base"),
])
def test_the_check_sees_every_way_to_import(code, found, tmp_path):
    sample = tmp_path / "m.py"
    sample.write_text(code)
    assert found in [module for _, module in imports(sample, package="medgpt_oss.models")]


def test_a_module_named_like_a_layer_is_not_in_it():
    assert within("medgpt_oss.eval.metrics", ("medgpt_oss.eval",))
    assert not within("medgpt_oss.evaluate", ("medgpt_oss.eval",))


def test_the_contract_reaches_no_model_or_data_code():
    reached, todo = set(), ["medgpt_oss.contract"]
    while todo:
        module = todo.pop()
        reached.add(module)
        for _, name in imports(module_file(module)):
            if name.startswith("medgpt_oss.") and module_file(name) and name not in reached:
                todo.append(name)
    assert reached == CONTRACT_REACHES
