# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The layout rules of plugins/ (CONTRIBUTING.md, "Architecture"), checked on the source.

- A module_utils file imports only from its own package, from the ground floor, and from the
  packages below its own (LAYERS); siblings of one layer do not import each other.
- No import cycle anywhere in plugins/, late (function-level) imports included.
- No function in plugins/ is longer than 60 lines.
"""

from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
PLUGINS = os.path.join(ROOT, "plugins")
PREFIX = "ansible_collections.opskit.runbook.plugins"
MAX_FUNCTION_LINES = 60

# Packages of module_utils, lowest first. A package may import from the ground floor and from
# packages of a lower layer; packages of one layer are independent of each other.
GROUND = "ground floor"
LAYERS = (
    (GROUND,),
    ("_storage", "_crypto"),
    ("_engine",),
    ("_postgres", "_volume", "_retention"),
    ("_health",),
    ("_rollout",),
)
RANK = {pkg: rank for rank, layer in enumerate(LAYERS) for pkg in layer}


def _modules():
    """{dotted name: path} of every Python file under plugins/."""
    found = {}
    for dirpath, _dirs, files in os.walk(PLUGINS):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, os.path.dirname(PLUGINS))[:-3].replace(os.sep, ".")
                if rel.endswith(".__init__"):
                    rel = rel[:-len(".__init__")]
                found[PREFIX.rsplit(".", 1)[0] + "." + rel] = path
    return found


MODULES = _modules()


def _resolve(importer, node):
    """The plugin modules that one Import/ImportFrom node of ``importer`` refers to."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in MODULES]
    if node.level:
        package = importer if MODULES[importer].endswith("__init__.py") else importer.rsplit(".", 1)[0]
        for _level in range(node.level - 1):
            package = package.rsplit(".", 1)[0]
        base = package + ("." + node.module if node.module else "")
    else:
        base = node.module or ""
    targets = []
    for alias in node.names:
        if base + "." + alias.name in MODULES:
            targets.append(base + "." + alias.name)
        elif base in MODULES:
            targets.append(base)
    return targets


def _imports():
    graph = {}
    for name, path in MODULES.items():
        with open(path) as fh:
            tree = ast.parse(fh.read(), path)
        graph[name] = sorted({t for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                              for t in _resolve(name, node) if t != name})
    return graph


GRAPH = _imports()


def _package(name):
    """The module_utils package of a dotted name, GROUND for the ground floor, None outside."""
    parts = name.split(".")   # ansible_collections.opskit.runbook.plugins.module_utils.<pkg>[.<file>]
    if len(parts) < 6 or parts[4] != "module_utils":
        return None
    if len(parts) == 6 and parts[5] not in RANK:
        return GROUND
    return parts[5]


def test_every_package_has_a_layer():
    packages = {name.split(".")[5] for name in MODULES if len(name.split(".")) > 6}
    assert packages <= set(RANK), "packages without a layer in LAYERS: %s" % sorted(packages - set(RANK))


def test_imports_follow_the_layers():
    wrong = []
    for name, targets in GRAPH.items():
        here = _package(name)
        if here is None:
            continue
        for target in targets:
            there = _package(target)
            if there is None or there == here:
                continue
            if RANK[there] >= RANK[here]:
                wrong.append("%s imports %s (%s may not import %s)" % (name, target, here, there))
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle():
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in GRAPH.get(node, ()):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(GRAPH):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def _functions():
    for name, path in sorted(MODULES.items()):
        with open(path) as fh:
            tree = ast.parse(fh.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield "%s:%d %s" % (os.path.relpath(path, ROOT), node.lineno, node.name), \
                    node.end_lineno - node.lineno + 1


def test_no_function_over_60_lines():
    long = ["%s: %d lines" % (where, lines) for where, lines in _functions() if lines > MAX_FUNCTION_LINES]
    assert not long, "functions over %d lines:\n%s" % (MAX_FUNCTION_LINES, "\n".join(long))


@pytest.mark.parametrize("source, expect_cycle", [
    ({"a": ["b"], "b": ["a"]}, True), ({"a": ["b"], "b": []}, False)])
def test_the_checks_find_what_they_look_for(monkeypatch, source, expect_cycle):
    monkeypatch.setitem(globals(), "GRAPH", source)
    if expect_cycle:
        with pytest.raises(AssertionError, match="a -> b -> a"):
            test_no_import_cycle()
    else:
        test_no_import_cycle()


def test_a_layer_violation_is_found(monkeypatch):
    mu = PREFIX + ".module_utils."
    monkeypatch.setitem(globals(), "GRAPH", {mu + "_storage.base": [mu + "_engine.catalog"],
                                             mu + "_engine.catalog": [mu + "_errors"]})
    with pytest.raises(AssertionError, match="_storage may not import _engine"):
        test_imports_follow_the_layers()
