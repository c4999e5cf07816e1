"""The package's import graph (grimp's, as lint-imports sees it): no module imports one that
imports it back, however long the way round.

The layers contract in .importlinter orders the packages; this holds every module of a package
to the same rule among its neighbours, which a layers contract cannot see.
"""

from __future__ import annotations

import grimp


def strongly_connected(graph: grimp.ImportGraph) -> list[set[str]]:
    """Tarjan's components of the module graph with more than one module: the cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == module:
                    break
            if len(component) > 1:
                found.append(component)

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def cycles() -> list[set[str]]:
    graph = grimp.build_graph("bucket_app")
    assert len(graph.modules) > 40, "grimp did not find the package"
    return strongly_connected(graph)


def test_no_module_is_in_an_import_cycle():
    assert cycles() == []


def test_the_cycle_finder_finds_a_cycle():
    graph = grimp.ImportGraph()
    for module in ("p", "p.a", "p.b", "p.c"):
        graph.add_module(module)
    graph.add_import(importer="p.a", imported="p.b")
    graph.add_import(importer="p.b", imported="p.c")
    assert strongly_connected(graph) == []
    graph.add_import(importer="p.c", imported="p.a")
    assert strongly_connected(graph) == [{"p.a", "p.b", "p.c"}]
