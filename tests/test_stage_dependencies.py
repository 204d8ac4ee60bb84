"""dvc.yaml's deps name every project file a stage executes, and dvc.lock matches the code.

A module a stage executes but does not declare is a change DVC never sees: the model and
metrics stay as they were and ``dvc repro`` calls them up to date. The imports of each
``python -m stages.<name>`` are walked here with ``ast`` (lazy imports inside functions
too), so the lists cannot drift from the code in either direction.

Files are listed one by one rather than as the ``agegap/`` folder, which would re-run the
long training for an edit to the server or the CLI. ``train`` and ``evaluate`` read the
split through ``agegap/split_manifest.py`` rather than ``stages/split.py``, so an edit to
the split stage reaches them only through ``data/split``. ``evaluate`` still executes
``stages/train.py`` (for two paths): whatever that re-runs, training re-runs anyway.
"""

from __future__ import annotations

import ast
import json
import shlex
import shutil
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, Reproduced, run

PACKAGES = ("agegap", "stages")
ABSENT = {"deleted", "not in cache"}
"""What ``dvc status`` says of a path that is merely not there (a fresh clone has no data)."""


def dvc_stages(root: Path = REPO) -> dict[str, dict[str, Any]]:
    return yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


STAGES = sorted(dvc_stages())


def stage_module(stage: dict[str, Any]) -> str:
    """``stages.train`` from ``cmd: python -m stages.train``; any other shape fails."""
    words = shlex.split(stage["cmd"])
    assert len(words) == 3 and words[:2] == ["python", "-m"], stage["cmd"]
    assert words[2].split(".")[0] in PACKAGES, stage["cmd"]
    return words[2]


def module_files(name: str, root: Path) -> list[str]:
    """The project files importing ``name`` executes: each package's ``__init__.py``, then
    the module itself; empty outside the project, cut short where a name is no module
    (``from agegap import CLASS_NAMES`` gives ``agegap.CLASS_NAMES``)."""
    parts = name.split(".")
    if parts[0] not in PACKAGES:
        return []
    files = []
    for depth in range(1, len(parts) + 1):
        base = root.joinpath(*parts[:depth])
        if (base / "__init__.py").is_file():
            files.append(f"{'/'.join(parts[:depth])}/__init__.py")
        elif base.with_suffix(".py").is_file():
            files.append(f"{'/'.join(parts[:depth])}.py")
        else:
            break
    return files


def _module_name(relative: str) -> str:
    parts = relative.removesuffix(".py").split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import, at any depth, except those only a type checker runs."""
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:
                yield from _import_nodes(other)
        else:
            yield from _import_nodes(child)


def imported_names(relative: str, root: Path) -> set[str]:
    """Dotted names ``relative`` imports; ``from p import x`` gives ``p`` and ``p.x``."""
    module = _module_name(relative)
    package = module if relative.endswith("__init__.py") else module.rpartition(".")[0]
    names: set[str] = set()
    for node in _import_nodes(ast.parse((root / relative).read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:  # relative: up from this module's package
            anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join([*anchor, *([base] if base else [])])
        names.add(base)
        names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return names


def executed_files(module: str, root: Path = REPO) -> dict[str, list[str]]:
    """Every project file ``python -m <module>`` executes, each with the chain of imports
    that reaches it (for the failure message)."""
    chains = {path: [f"python -m {module}", path] for path in module_files(module, root)}
    todo = deque(chains)  # breadth first: the shortest chains
    while todo:
        current = todo.popleft()
        for name in sorted(imported_names(current, root)):
            for path in module_files(name, root):
                if path not in chains:
                    chains[path] = [*chains[current], path]
                    todo.append(path)
    return chains


def declared(entries: list[Any] | None) -> list[str]:
    """Paths of a deps/outs/metrics/plots list, whose items are paths or ``{path: options}``."""
    return [entry if isinstance(entry, str) else next(iter(entry)) for entry in entries or []]


def covers(paths: list[str], path: str) -> bool:
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in paths)


def git_tracked(root: Path) -> set[str]:
    listed = run(["git", "ls-files", "-z"], root).stdout.split("\0")
    return set(filter(None, listed))


def test_every_stage_is_checked() -> None:
    """A stage whose command the walk cannot read would otherwise pass unchecked."""
    modules = {stage_module(stage) for stage in dvc_stages().values()}
    on_disk = {f"stages.{p.stem}" for p in (REPO / "stages").glob("*.py") if p.stem != "__init__"}
    assert modules == on_disk, "every stages/*.py module is one dvc.yaml stage"
    for module in modules:
        files = executed_files(module)
        library = [f for f in files if f.startswith("agegap/") and f != "agegap/__init__.py"]
        assert len(library) >= 3, f"{module}: the walk found only {sorted(files)}"


@pytest.mark.parametrize("name", STAGES)
def test_each_stage_declares_every_file_it_executes(name: str) -> None:
    stage = dvc_stages()[name]
    deps = declared(stage.get("deps"))
    chains = executed_files(stage_module(stage))
    missing = [
        f"stage '{name}' executes {path} (via {' -> '.join(chain)}) but its deps lack it"
        for path, chain in sorted(chains.items())
        if not covers(deps, path)
    ]
    assert not missing, "dvc.yaml:\n" + "\n".join(missing)


@pytest.mark.parametrize("name", STAGES)
def test_no_stage_declares_code_it_does_not_execute(name: str) -> None:
    """A stale entry re-runs the stage, and everything after it, for nothing."""
    stage = dvc_stages()[name]
    executed = executed_files(stage_module(stage))
    extra = [
        path for path in declared(stage.get("deps"))
        if path.endswith(".py") and path.split("/")[0] in PACKAGES and path not in executed
    ]
    assert not extra, f"dvc.yaml: stage '{name}' lists {extra} in deps but never imports them"


def test_every_declared_dependency_exists() -> None:
    """Each dep is another stage's output or in git (a new module must be git-added)."""
    stages = dvc_stages()
    produced = [
        path for stage in stages.values()
        for key in ("outs", "metrics", "plots") for path in declared(stage.get(key))
    ]
    tracked = sorted(git_tracked(REPO))
    absent = [
        f"stage '{name}' depends on {path}, which no stage writes and git does not track"
        " (missing, or not git-added)"
        for name, stage in stages.items() for path in declared(stage.get("deps"))
        if path not in produced and not any(covers([path], t) for t in tracked)
    ]
    assert not absent, "dvc.yaml:\n" + "\n".join(absent)


def stale_code(status: dict[str, list[Any]], tracked: set[str]) -> list[str]:
    """What ``dvc status --json`` says changed in code or params since dvc.lock was written.

    Deps and outs that are merely absent (a fresh clone has no data, models or cache) are
    no news; neither is data that differs from the lock, which is not in git.
    """
    problems = []
    for name, changes in status.items():
        for change in changes:
            if isinstance(change, str):  # "changed command", a stage new to dvc.lock
                if change != "always changed":
                    problems.append(f"stage '{name}': {change}")
                continue
            for path, state in change.get("changed deps", {}).items():
                if isinstance(state, dict):  # params.yaml: {key: "modified" | "new" | "deleted"}
                    problems += [f"stage '{name}': param {key} {how}" for key, how in state.items()]
                elif state not in ABSENT and any(covers([path], t) for t in tracked):
                    problems.append(f"stage '{name}': {path} {state}")
    return problems


def lock_problems(source: Path, scratch: Path) -> list[str]:
    """:func:`stale_code` for ``source`` as a fresh clone of it would see it.

    Its git-tracked files (as they are on disk) are copied to ``scratch``: no data there,
    no cache, and no wait for a DVC command running in ``source``.
    """
    tracked = git_tracked(source)
    for relative in tracked:
        if (source / relative).is_file():
            (scratch / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / relative, scratch / relative)
    run(["git", "init", "-q"], scratch)  # DVC wants a git repository; no commit needed
    status = json.loads(run(["dvc", "status", "--json"], scratch).stdout)
    return stale_code(status, tracked)


# `dvc status --json` (DVC 3.67) in a fresh clone of a project whose dvc.lock is current.
FRESH_CLONE = {
    "download": [{"changed outs": {"data/raw": "not in cache"}}],
    "split": [
        {"changed deps": {"data/raw": "deleted"}},
        {"changed outs": {"data/split": "not in cache"}},
    ],
    "train": [
        {"changed deps": {"data/split": "deleted"}},
        {"changed outs": {"models/model.keras": "not in cache", "logs": "not in cache"}},
    ],
    "evaluate": [
        {"changed deps": {"models/model.keras": "deleted", "data/split": "deleted"}},
        {"changed outs": {"plots/evaluate/misclassified.png": "not in cache"}},
    ],
}
# The same after an edit of agegap/images.py, a new dropout, a dependency added to train
# ("modified", as DVC reports it) and an edited command, with data/split re-made locally.
STALE = {
    "download": [
        {"changed deps": {"agegap/images.py": "modified"}},
        {"changed outs": {"data/raw": "not in cache"}},
    ],
    "average_faces": [
        {"changed deps": {"data/split": "modified"}},
        {"changed outs": {"plots/average_faces": "not in cache"}},
        "changed command",
    ],
    "train": [
        {"changed deps": {
            "data/split": "modified", "agegap/machine.py": "modified",
            "params.yaml": {"dropout": "modified"},
        }},
        {"changed outs": {"models/model.keras": "deleted"}},
    ],
}
TRACKED = {"agegap/images.py", "agegap/machine.py", "params.yaml", "data/README.md"}


def test_the_lock_check_ignores_absent_data_and_names_stale_code() -> None:
    assert stale_code(FRESH_CLONE, TRACKED) == []
    assert stale_code(STALE, TRACKED) == [
        "stage 'download': agegap/images.py modified",
        "stage 'average_faces': changed command",
        "stage 'train': agegap/machine.py modified",
        "stage 'train': param dropout modified",
    ]


@pytest.mark.slow
def test_committed_lock_matches_the_code(tmp_path: Path) -> None:
    """CI's check that whoever changed code or params also re-ran the pipeline."""
    if "dvc.lock" not in git_tracked(REPO):
        pytest.skip("no dvc.lock is committed yet: nothing to hold the code against")
    problems = lock_problems(REPO, tmp_path)
    assert not problems, (
        "dvc.lock is stale; re-run dvc repro and commit dvc.lock:\n" + "\n".join(problems)
    )


@pytest.mark.slow
def test_editing_a_module_makes_exactly_its_importers_stale(
    reproduced: Reproduced, tmp_path: Path
) -> None:
    """Real DVC: after an edit of modules some stages import only through others, those
    stages, and no others, report them as changed dependencies.

    ``dvc commit`` cannot stand in for the run: it refuses a stage whose outputs do not
    exist, so the lock comes from a real ``dvc repro``.
    """
    project = reproduced.copy(tmp_path / "project")
    run(["git", "add", "dvc.lock"], project)
    (tmp_path / "clean").mkdir()
    assert lock_problems(project, tmp_path / "clean") == []

    edited = {"agegap/augment.py", "agegap/lag.py"}
    for path in edited:
        with (project / path).open("a", encoding="utf-8") as file:
            file.write("# an edit DVC must see\n")
    status = json.loads(run(["dvc", "status", "--json"], project).stdout)
    reported = {
        name: {path for change in changes if isinstance(change, dict)
               for path in change.get("changed deps", {})}
        for name, changes in status.items()
    }
    executed = {
        name: edited & set(executed_files(stage_module(stage), project))
        for name, stage in dvc_stages(project).items()
    }
    expected = {name: files for name, files in executed.items() if files}
    # augment.py reaches train and evaluate through the model; average_faces reads the
    # split's manifest without executing the scanner that made it, so it stays up to date.
    assert expected == {
        "download": {"agegap/lag.py"}, "split": {"agegap/lag.py"},
        "train": {"agegap/augment.py"}, "evaluate": {"agegap/augment.py"},
    }
    assert reported == expected, status
    (tmp_path / "stale").mkdir()
    assert sorted(lock_problems(project, tmp_path / "stale")) == sorted(
        f"stage '{name}': {path} modified" for name, paths in expected.items() for path in paths
    )
