"""The package layout the design card asks for, and one-way imports between the stages."""

import ast
import importlib
import importlib.metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STAGES = {"data": "persona.data", "train": "persona.train", "inference": "persona.inference"}


def test_stage_packages_install_under_persona():
    for folder, module in STAGES.items():
        mod = importlib.import_module(module)
        assert Path(mod.__file__).parent == REPO / folder


def test_no_top_level_stage_modules_are_installed():
    top = importlib.metadata.distribution("persona").read_text("top_level.txt")
    if top is not None:
        assert set(top.split()) == {"persona"}
    for name in ("data", "train", "inference", "recipes"):
        spec = importlib.util.find_spec(name)
        assert spec is None or "persona" not in str(spec.origin or "")


def test_recipes_are_package_data():
    from persona.config import recipes_root

    assert recipes_root().is_dir()


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("folder", sorted(STAGES))
def test_stages_never_import_each_other_or_the_cli(folder):
    others = [m for f, m in STAGES.items() if f != folder]
    for path in (REPO / folder).rglob("*.py"):
        for name in _imports(path):
            assert not any(name == o or name.startswith(o + ".") for o in others), f"{path} imports {name}"
            assert name not in ("persona.cli", "persona.demo"), f"{path} imports {name}"


def test_core_does_not_import_stages():
    for path in (REPO / "persona").rglob("*.py"):
        if path.name in ("cli.py", "demo.py", "studio.py"):
            continue  # the CLI, the demo and the studio sit on top
        for name in _imports(path):
            assert not any(name.startswith(m) for m in STAGES.values()), f"{path} imports {name}"
