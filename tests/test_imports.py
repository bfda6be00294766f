"""The package's import graph, computed from the source: no import circle, and nothing imports the command line.

Every `import` and `from ... import` of a prompt_tuning module counts, at module level, inside a function (a
function-level import hides a circle until the function runs, it does not remove it) or under `if __name__ ==
"__main__":` (`python -m prompt_tuning.train` runs the module's code as a program: what it imports there is still
its import). One kind of line is not an edge: the implicit import of a module's parent packages (Python finishes a
package's `__init__` first whatever the submodule imports).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "prompt_tuning"


def module_files(package: Path) -> dict[str, Path]:
  """{dotted module name: file} of every .py file under `package` (a package is named by its folder)."""
  modules = {}
  for path in sorted(package.rglob("*.py")):
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
      parts.pop()
    modules[".".join(parts)] = path
  return modules


def _imports(tree: ast.AST):
  """Every Import / ImportFrom node, anywhere."""
  for node in ast.iter_child_nodes(tree):
    if isinstance(node, (ast.Import, ast.ImportFrom)):
      yield node
    yield from _imports(node)


def _known(name: str, modules: dict[str, Path]) -> str | None:
  """`name`, or the nearest package above it that is a module of ours (`from pkg import attr` names pkg)."""
  while name and name not in modules:
    name = name.rpartition(".")[0]
  return name or None


def import_graph(package: Path) -> dict[str, set[str]]:
  """{module: the package's modules it imports}, from the source."""
  modules = module_files(package)
  root = package.name
  graph = {}
  for name, path in modules.items():
    is_package = path.name == "__init__.py"
    targets = set()
    for node in _imports(ast.parse(path.read_text(), str(path))):
      if isinstance(node, ast.Import):
        targets |= {_known(a.name, modules) for a in node.names if a.name.split(".")[0] == root}
        continue
      if node.level:  # relative: from . import x, from .mod import y
        base = name.split(".") if is_package else name.split(".")[:-1]
        base = base[: len(base) - node.level + 1]
        source = ".".join([*base, *([node.module] if node.module else [])])
      else:
        source = node.module or ""
      if source.split(".")[0] != root:
        continue
      for alias in node.names:  # `from pkg import sub` imports the submodule sub; `from mod import f` imports mod
        submodule = f"{source}.{alias.name}"
        targets.add(submodule if submodule in modules else _known(source, modules))
    graph[name] = targets - {name, None}
  return graph


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
  """One circle per strongly connected component of more than one module, as a path `a -> b -> ... -> a`."""
  index, low, stack, on_stack, components = {}, {}, [], set(), []

  def visit(v: str) -> None:  # Tarjan's algorithm
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph.get(v, ())):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = set()
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.add(w)
        if w == v:
          break
      if len(component) > 1:
        components.append(component)

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return [_circle_through(graph, component) for component in components]


def _circle_through(graph: dict[str, set[str]], component: set[str]) -> list[str]:
  """A shortest circle from the component's first module back to itself (breadth-first, inside the component)."""
  start = min(component)
  paths = {start: [start]}
  frontier = [start]
  while frontier:
    following = []
    for v in frontier:
      for w in sorted(graph[v] & component):
        if w == start:
          return [*paths[v], start]
        if w not in paths:
          paths[w] = [*paths[v], w]
          following.append(w)
    frontier = following
  raise AssertionError(f"no circle through {start} in {sorted(component)}")


def test_the_package_has_no_import_circle():
  circles = import_circles(import_graph(PACKAGE))
  assert not circles, "import circles (break each: move the function where it belongs, or pass a value):\n" + "\n".join(
    " -> ".join(circle) for circle in circles
  )


def test_nothing_in_the_package_imports_the_command_line():
  """cli.py dispatches; command.py runs a command, and gin_config.py is the gin library every entry point shares."""
  graph = import_graph(PACKAGE)
  importers = sorted(name for name, targets in graph.items() if "prompt_tuning.cli" in targets)
  assert importers == [], f"{importers} import prompt_tuning.cli; import prompt_tuning.gin_config instead"
  assert "prompt_tuning.gin_config" in graph["prompt_tuning.command"]
  for entry in ("train", "eval", "infer"):  # `python -m prompt_tuning.train` runs the command without the cli
    assert graph[f"prompt_tuning.{entry}.__main__"] == {"prompt_tuning.command"}


@pytest.mark.parametrize("style", ["module level", "function level", "relative"])
def test_a_circle_is_found_and_named(tmp_path, style):
  """The check above can fail: a circle through a function-level or relative import is found, with its path."""
  package = tmp_path / "prompt_tuning"
  (package / "sub").mkdir(parents=True)
  (package / "__init__.py").write_text("")
  (package / "sub" / "__init__.py").write_text("")
  (package / "a.py").write_text("from prompt_tuning.sub import b\n")
  back = {
    "module level": "from prompt_tuning import a\n",
    "function level": "def f():\n  from prompt_tuning.a import g\n  return g\n",
    "relative": "from .. import a\n",
  }[style]
  (package / "sub" / "b.py").write_text(back)
  (package / "c.py").write_text('if __name__ == "__main__":\n  from prompt_tuning import a\n')
  graph = import_graph(package)
  assert import_circles(graph) == [["prompt_tuning.a", "prompt_tuning.sub.b", "prompt_tuning.a"]]
  assert graph["prompt_tuning.c"] == {"prompt_tuning.a"}  # a __main__ block's import is the module's import
