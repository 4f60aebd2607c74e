"""No import cycles in the package, counting imports inside functions (they used to hide one)."""

import ast
import importlib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "agnews_lora"


def _is_type_checking(node) -> bool:
    """``if TYPE_CHECKING:`` blocks are never run, so their imports make no cycle."""
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (
        getattr(test, "id", None) == "TYPE_CHECKING"
        or getattr(test, "attr", None) == "TYPE_CHECKING"
    )


def _edges() -> dict[str, set[str]]:
    mods = {p.stem for p in PACKAGE.glob("*.py")}
    edges = {}
    for name in mods:
        out = set()
        tree = ast.parse((PACKAGE / f"{name}.py").read_text(encoding="utf-8"))
        typing_only = {
            id(n) for node in ast.walk(tree) if _is_type_checking(node) for n in ast.walk(node)
        }
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or id(node) in typing_only:
                continue
            if node.level == 1 and node.module:
                out.add(node.module.split(".")[0])
            elif node.level == 1:
                out |= {a.name for a in node.names}
            elif node.module and node.module.startswith("agnews_lora."):
                out.add(node.module.split(".")[1])
        edges[name] = out & (mods - {"__init__", "__main__"})
    return edges


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(n: str, path: list[str]) -> list[str] | None:
        state[n] = 1
        for m in sorted(edges[n]):
            if state.get(m) == 1:
                return path[path.index(m) :] + [m]
            if m not in state and (found := visit(m, path + [m])):
                return found
        state[n] = 2
        return None

    for n in sorted(edges):
        if n not in state and (found := visit(n, [n])):
            return found
    return None


def test_no_import_cycles_and_every_module_imports():
    edges = _edges()
    assert {"training", "loop", "export", "weights", "runs", "checkpoint"} <= edges.keys()
    assert "training" not in edges["export"] and "loop" not in edges["export"]
    assert _cycle(edges) is None, " -> ".join(_cycle(edges))
    for name in sorted(edges.keys() - {"__init__", "__main__"}):
        importlib.import_module(f"agnews_lora.{name}")


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
