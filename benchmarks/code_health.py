"""Code-health figures of the source tree: long files, long functions, import circles, long lines, docstrings.

Run: ``python benchmarks/code_health.py [ROOT]`` (default: the repository). Counts ``emotion_core``,
``tasks``, ``flows``, ``emotion_cli`` and ``deployments`` (not tests or benchmarks).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGES = ("emotion_core", "tasks", "flows", "emotion_cli", "deployments")


def source_files(root: Path) -> list[Path]:
    return sorted(p for pkg in PACKAGES if (root / pkg).is_dir() for p in (root / pkg).rglob("*.py"))


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(tree: ast.Module, name: str, is_package: bool, deferred: bool) -> set[str]:
    """Project modules imported at module level, and with ``deferred`` also inside functions."""
    found = set()
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(tree) if deferred else tree.body:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def main(root: Path) -> None:
    files = source_files(root)
    modules = {module_name(root, p): p for p in files}
    long_files, long_functions, long_lines, doc_lines, total = [], [], 0, 0, 0
    graph, deferred_graph = {}, {}
    for name, path in modules.items():
        text = path.read_text()
        lines = text.splitlines()
        total += len(lines)
        if len(lines) > 300:
            long_files.append((len(lines), str(path.relative_to(root))))
        long_lines += sum(len(line) > 120 for line in lines)
        tree = ast.parse(text)
        doc = ast.get_docstring(tree, clean=False)
        if doc is not None:
            doc_lines += tree.body[0].end_lineno - tree.body[0].lineno + 1
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 60:
                    long_functions.append((length, f"{path.relative_to(root)}::{node.name}"))
        for deferred, g in ((False, graph), (True, deferred_graph)):
            imported = imports_of(tree, name, path.name == "__init__.py", deferred)
            g[name] = {m for m in imported if m in modules and m != name}
    print(f"source lines: {total} in {len(files)} files")
    print(f"files over 300 lines: {len(long_files)}")
    for n, f in sorted(long_files, reverse=True):
        print(f"  {n:5d} {f}")
    print(f"functions over 60 lines: {len(long_functions)}")
    for n, f in sorted(long_functions, reverse=True):
        print(f"  {n:5d} {f}")
    found = circles(graph)
    print(f"import circles (module level): {len(found)}")
    for c in found:
        print("  " + " <-> ".join(c))
    found = circles(deferred_graph)
    print(f"import circles counting imports inside functions: {len(found)}")
    for c in found:
        print("  " + " <-> ".join(c))
    print(f"lines over 120 characters: {long_lines}")
    print(f"module-docstring lines: {doc_lines} ({100 * doc_lines / total:.1f} % of the code)")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1])
