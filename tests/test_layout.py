"""The library's shape: no module imports one that imports it back (also through imports inside functions),
and every file is written through the one atomic writer."""

import ast
import os

from conftest import REPO

PACKAGE = os.path.join(REPO, "psl_keras")


def _modules():
    modules = {}
    for directory, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                module = os.path.relpath(path[:-3], REPO).replace(os.sep, ".")
                modules[module.removesuffix(".__init__")] = path
    return modules


def _imports(path, modules):
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("psl_keras"):
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in modules else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("psl_keras"))
    return found & set(modules)


def test_no_import_cycles():
    modules = _modules()
    graph = {m: _imports(p, modules) for m, p in modules.items()}
    cycles = []
    for start in graph:  # depth-first from every module, looking for a way back to it
        stack, seen = [(start, (start,))], set()
        while stack:
            module, path = stack.pop()
            for target in graph[module]:
                if target == start:
                    cycles.append(" -> ".join(path + (start,)))
                elif target not in seen:
                    seen.add(target)
                    stack.append((target, path + (target,)))
    assert not cycles, cycles


def test_files_are_renamed_into_place_by_the_atomic_writer_only():
    offenders = []
    for directory in (PACKAGE, os.path.join(REPO, "apps")):
        for root, _, files in os.walk(directory):
            for name in files:
                path = os.path.join(root, name)
                if name.endswith(".py") and not path.endswith(os.path.join("psl_keras", "atomic.py")):
                    text = open(path).read()
                    offenders += [path for call in ("os.replace(", "os.rename(", "mkstemp(") if call in text]
    assert not offenders, offenders
