"""The shape of the package: no import cycle, every module importable on its own, cheap imports.

The import graph is read from the source (every `import` statement, at module level or inside a
function: a function-local import that closes a cycle is still a cycle, only deferred), so a
cycle is caught the day it is written, whichever order the tests import things in.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import asymbp

SRC = Path(asymbp.__file__).parent
ROOT = "asymbp"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


def _imports(name: str) -> set[str]:
    """The asymbp modules that `name` imports explicitly (the target module of each statement,
    or the submodule for `from package import submodule`)."""
    tree = ast.parse(MODULES[name].read_text(), filename=str(MODULES[name]))
    here = name if _is_package(name) else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == ROOT}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.rsplit(".", node.level - 1)[0] if node.level > 1 else here
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if target.split(".")[0] != ROOT:
                continue
            subs = {f"{target}.{a.name}" for a in node.names} & set(MODULES)
            # `from pkg import sub` imports the submodule; `from pkg import name` the package.
            out |= subs or {target}
            if len(subs) < len(node.names):
                out.add(target)
    out.discard(name)
    return {m for m in out if m in MODULES}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` as a path [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_the_import_walk_sees_every_module():
    graph = {m: _imports(m) for m in MODULES}
    assert {"asymbp.train", "asymbp.layers", "asymbp.cli"} <= set(graph)
    assert "asymbp.layers" in graph["asymbp.convert"]  # a plain `from .layers import ...`
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_the_package_has_no_import_cycle():
    graph = {m: _imports(m) for m in MODULES}
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_every_module_imports_alone_in_a_fresh_interpreter():
    # A fresh interpreter per module would pay torch's import (1-2 s) sixty times. Instead one
    # interpreter imports torch and numpy, nothing of asymbp, and forks a child per module: each
    # child starts with no asymbp module loaded and imports just that one.
    names = sorted(m for m in MODULES if not m.endswith("__main__"))
    code = (
        "import importlib, os, sys, traceback\n"
        "import numpy, torch\n"
        "assert not any(m.split('.')[0] == 'asymbp' for m in sys.modules)\n"
        f"for name in {names!r}:\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        try:\n"
        "            importlib.import_module(name)\n"
        "        except BaseException:\n"
        "            print(name + ': ' + traceback.format_exc().strip().splitlines()[-1])\n"
        "            sys.stdout.flush()\n"
        "            os._exit(1)\n"
        "        os._exit(0)\n"
        "    os.waitpid(pid, 0)\n"
    )
    assert _run(code).strip() == ""


def test_public_submodules_are_attributes_of_a_plain_import():
    out = _run("import asymbp, sys\n"
               "print(asymbp.store.load.__module__, asymbp.train.train.__module__,\n"
               "      callable(asymbp.report.table), 'pandas' in sys.modules)")
    store_mod, train_mod, table_ok, _ = out.split()
    assert store_mod == "asymbp.store" and train_mod == "asymbp.train" and table_ok == "True"


@pytest.mark.parametrize("module", ["asymbp", "asymbp.data", "asymbp.feedback", "asymbp.layers",
                                    "asymbp.train"])
def test_core_imports_do_not_pull_in_the_heavy_downstream_packages(module):
    heavy = ["pandas", "matplotlib", "ray", "scipy", "torch._dynamo"]
    out = _run(f"import sys, {module}\nprint(' '.join(m for m in {heavy!r} if m in sys.modules))")
    assert out.strip() == "", f"import {module} pulled in {out.strip()}"
