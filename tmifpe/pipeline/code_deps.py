"""The code a stage's results depend on, derived from its imports (not kept by hand).

For a stage entry module (``stages.attack``) the transitive closure of the project modules
(``tmifpe.*``, ``stages.*``) it imports, read statically with :mod:`ast`: ``import a.b``,
``from a import b`` (``a.b`` when b is a submodule), relative imports, and imports inside
functions (lazy imports are real dependencies); the ``__init__`` of every enclosing package runs
too. Skipped: ``if TYPE_CHECKING:`` blocks (never run) and a module's PEP 562 ``__getattr__``
(``tmifpe.evaluate`` resolved lazily: code that runs the API imports ``tmifpe.api``).

The loss registry (``tmifpe/losses/__init__.py``) is the one exception: it imports every loss
package, but a stage runs only the losses it fetches from it, so that DVC re-runs only the cells
of the loss whose folder changed. The registry's imports of the loss packages are not followed;
the stage's own losses are added instead: its cell's loss (the attack stage, ``--loss``), the
subset it declares in :data:`LOSS_SCOPES` (checked where it is used), or every loss. A loss
package imported directly (APGD imports T-MIFPE and MIFPE) is followed like any module. In
dvc.yaml a loss package is its folder.

:func:`code_files` is both the code deps of the stage in ``dvc.yaml`` (written by
``scripts/sync_dvc_deps.py``, checked by tests/test_code_deps.py) and what the resume keys of
the cells hash (:func:`code_hash`).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

from tmifpe.storage import sha256_json, sha256_path

ROOT = Path(__file__).resolve().parents[2]
PROJECT_PACKAGES = ("tmifpe", "stages")
LOSSES_PACKAGE = "tmifpe.losses"

# The losses a stage fetches from the registry (a stage not listed: every loss, e.g. the
# diagnostics; the attack stage: its cell's). The fast preset's phases are checked against
# FAST_STAGE_LOSSES, the ablation variants against ABLATION_LOSSES (tests/test_code_deps.py).
LOSS_SCOPES: dict[str, tuple[str, ...]] = {
    "stages.fast": ("tmifpe", "dlr"),  # tmifpe.pipeline.fast_config.FAST_STAGE_LOSSES
    "stages.ablations": ("ce", "mifpe", "tmifpe"),  # tmifpe.pipeline.ablations.ABLATION_LOSSES
    # no loss computed: data, training (its own CE), AutoAttack (pyautoattack's losses), and
    # the registry's names and labels only
    "stages.data": (), "stages.model": (), "stages.autoattack": (),
    "stages.aggregate": (), "stages.report": (),
}
PER_ITEM_LOSS = "tmifpe/losses/${item.loss}"  # the attack cell's own loss package in dvc.yaml


def module_path(module: str, root: Path = ROOT) -> Path | None:
    """The source file of a project module (package: its ``__init__.py``), None if not one."""
    if module.split(".")[0] not in PROJECT_PACKAGES:
        return None
    base = root.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.Module) -> Iterable[ast.Import | ast.ImportFrom]:
    stack: list[ast.AST] = [n for n in tree.body if not (
        isinstance(n, ast.FunctionDef) and n.name == "__getattr__")]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
        else:
            stack.extend(ast.iter_child_nodes(node))


def imported_modules(module: str, root: Path = ROOT) -> set[str]:
    """Names ``module`` imports anywhere in its source (``from a import b`` gives a and a.b)."""
    path = module_path(module, root)
    if path is None:
        return set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in _import_nodes(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
            continue
        base = node.module or ""
        if node.level:  # relative: `from ..x import y` inside package a.b -> a.x
            parts = package.split(".")
            anchor = parts[: len(parts) - node.level + 1]
            base = ".".join([*anchor, *([base] if base else [])])
        names.add(base)
        names |= {f"{base}.{alias.name}" for alias in node.names if alias.name != "*"}
    return {n for n in names if n}


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def loss_packages(root: Path = ROOT) -> tuple[str, ...]:
    """The loss package names (folders of tmifpe/losses with an ``__init__.py``)."""
    folder = root / "tmifpe/losses"
    return tuple(sorted(p.name for p in folder.iterdir() if (p / "__init__.py").is_file()))


def _loss_of(module: str, losses: tuple[str, ...]) -> str | None:
    """The loss package ``module`` belongs to, if any."""
    prefix = f"{LOSSES_PACKAGE}."
    head = module.removeprefix(prefix).split(".")[0]
    return head if module.startswith(prefix) and head in losses else None


def _registry_edge(module: str, imported: str, losses: tuple[str, ...]) -> bool:
    """An import of a loss package by the loss registry (cut: see the module doc)."""
    return module == LOSSES_PACKAGE and _loss_of(imported, losses) is not None


def closure(entries: Iterable[str], root: Path = ROOT) -> set[str]:
    """Project modules ``entries`` import, transitively, themselves and enclosing packages
    included, except the loss registry's imports of the loss packages (see the module doc)."""
    losses = loss_packages(root)
    todo, seen = list(entries), set()
    while todo:
        module = todo.pop()
        if module in seen or module_path(module, root) is None:
            continue
        seen.add(module)
        todo += _parents(module)
        todo += [m for m in imported_modules(module, root) if not _registry_edge(module, m, losses)]
    return seen


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def loss_folder(loss: str) -> str:
    return f"tmifpe/losses/{loss}"


def stage_losses(stage_module: str, loss: str | None = None, root: Path = ROOT) -> tuple[str, ...]:
    """The losses a stage fetches from the registry: ``loss`` (a cell's own), else the stage's
    declared scope, else every loss."""
    losses = loss_packages(root)
    if loss is not None:
        if loss not in losses:
            raise ValueError(f"unknown loss {loss!r}; expected one of: {', '.join(losses)}")
        return (loss,)
    return LOSS_SCOPES.get(stage_module, losses)


def _split(modules: set[str], root: Path) -> tuple[set[str], set[str]]:
    """(files outside the loss packages, folders of the loss packages among ``modules``)."""
    losses = loss_packages(root)
    files, folders = set(), set()
    for module in modules:
        if (loss := _loss_of(module, losses)) is not None:
            folders.add(loss_folder(loss))
        elif (path := module_path(module, root)) is not None:
            files.add(_rel(path, root))
    return files, folders


def _entries(stage_module: str, losses: Iterable[str]) -> list[str]:
    return [stage_module, *(f"{LOSSES_PACKAGE}.{name}" for name in losses)]


def code_files(stage_module: str, loss: str | None = None, root: Path = ROOT) -> list[str]:
    """Repo-relative files whose content determines the results of ``stage_module``'s stage
    (of its cell with ``loss``, a stage with one cell per loss): exactly the stage's dvc.yaml
    code deps (:func:`dvc_code_deps`), loss folders expanded to their Python files."""
    files = set()
    for dep in dvc_code_deps(stage_module, per_item_loss=loss is not None, root=root):
        if dep == PER_ITEM_LOSS:
            dep = loss_folder(stage_losses(stage_module, loss, root)[0])
        if dep.endswith(".py"):
            files.add(dep)
        else:
            files |= {_rel(p, root) for p in (root / dep).rglob("*.py")
                      if "__pycache__" not in p.parts}
    return sorted(files)


def code_hash(stage_module: str, loss: str | None = None, root: Path = ROOT) -> str:
    """SHA-256 over the contents of :func:`code_files` (the code part of a resume key)."""
    return sha256_json({f: sha256_path(root / f) for f in code_files(stage_module, loss, root)})


def dvc_code_deps(stage_module: str, *, per_item_loss: bool, root: Path = ROOT) -> list[str]:
    """The code deps of a stage in dvc.yaml: files, then loss folders; a stage with one cell
    per loss (``per_item_loss``) gets the templated ``tmifpe/losses/${item.loss}`` for its
    cell's own loss and the union of what each loss needs besides."""
    if module_path(stage_module, root) is None:
        raise ValueError(f"stage module {stage_module!r} not found under {root} (expected "
                         "stages.<name> of a source checkout)")
    if not per_item_loss:
        files, folders = _split(closure(_entries(stage_module, stage_losses(stage_module,
                                                                            root=root)), root),
                                root)
        return [*sorted(files), *sorted(folders)]
    files, folders = set(), set()
    for name in loss_packages(root):
        more, reached = _split(closure(_entries(stage_module, [name]), root), root)
        files |= more
        folders |= reached - {loss_folder(name)}
    return [*sorted(files), *sorted(folders), PER_ITEM_LOSS]
def is_code_dep(entry: str, root: Path = ROOT) -> bool:
    """True for a dvc.yaml dep that is project code (derived here), False for data deps."""
    if not entry.startswith(tuple(f"{p}/" for p in PROJECT_PACKAGES)):
        return False
    return (entry.endswith(".py") or entry == PER_ITEM_LOSS
            or (root / entry / "__init__.py").is_file())
