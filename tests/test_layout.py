"""The house rules of the repository's layout, read off the source with `ast` (nothing is imported):

- sd/ is grouped by concern into floors; a module imports only from its own group or a floor below
  (models < checkpoints < edits, controlnet, evaluation < sampling < training < the commands), never sideways
  between two groups of one floor, and the modules' import graph has no cycle;
- rectflow/ stays at the bottom (it imports nothing of toy/ or sd/), toy/ never imports sd/.
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# group -> floor; a module's group is its first package below sd/ ("sd" itself: the commands on top)
FLOORS = {"models": 0, "checkpoints": 1, "edits": 2, "controlnet": 2, "evaluation": 2, "sampling": 3, "training": 4,
          "commands": 5}


def module_name(path, root=ROOT):
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path, root=ROOT):
    """Absolute names of the modules a file imports (relative imports resolved; `from p import m`
    gives p.m when p/m is a module of the repository, else p)."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module
            for a in node.names:
                sub = mod + "." + a.name
                is_module = (root / Path(*sub.split("."))).with_suffix(".py").exists() or \
                    (root / Path(*sub.split(".")) / "__init__.py").exists()
                found.add(sub if is_module else mod)
    return found


def group(module):
    """The sd/ group of a module, or None outside sd/."""
    parts = module.split(".")
    if parts[0] != "sd":
        return None
    return parts[1] if len(parts) > 1 and parts[1] in FLOORS else "commands"


def layering_errors(root=ROOT):
    errors = []
    for path in sorted((root / "sd").rglob("*.py")):
        me = module_name(path, root)
        for dep in sorted(imports(path, root)):
            mine, theirs = group(me), group(dep)
            if theirs is None or mine == theirs:
                continue
            if FLOORS[theirs] > FLOORS[mine] or (FLOORS[theirs] == FLOORS[mine]):
                errors.append(f"{me} ({mine}) imports {dep} ({theirs})")
    return errors


def cycles(root=ROOT):
    """Cycles in the import graph of the repository's own modules (one example per cycle found)."""
    graph = {}
    for top in ("rectflow", "toy", "sd"):
        for path in (root / top).rglob("*.py"):
            graph[module_name(path, root)] = {d for d in imports(path, root)}
    graph = {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}
    found, state = [], {}

    def visit(m, stack):
        state[m] = "open"
        for d in sorted(graph[m]):
            if state.get(d) == "open":
                found.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d, stack + [d])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    return found


def test_sd_imports_only_point_down():
    assert layering_errors() == []


def test_no_import_cycles():
    assert cycles() == []


@pytest.mark.parametrize("package, forbidden", [("rectflow", ("toy", "sd")), ("toy", ("sd",))])
def test_lower_packages_never_import_higher_ones(package, forbidden):
    bad = [f"{module_name(p)} imports {d}" for p in sorted((ROOT / package).rglob("*.py"))
           for d in imports(p) if d.split(".")[0] in forbidden]
    assert bad == []


def test_every_group_says_what_it_may_import():
    for name in [g for g in FLOORS if g != "commands"] + ["mini"]:
        doc = ast.get_docstring(ast.parse((ROOT / "sd" / name / "__init__.py").read_text()))
        assert doc and "import" in doc, f"sd/{name}/__init__.py: its docstring must say what it may import"


def test_the_checks_see_an_upward_import_and_a_cycle(tmp_path):
    """The rules above on a scratch copy with a seeded bug: models importing sampling, and a cycle."""
    for f in ("models/__init__.py", "models/unet.py", "sampling/__init__.py", "sampling/loop.py"):
        (tmp_path / "sd" / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "sd" / f).write_text("")
    for top in ("rectflow", "toy"):
        (tmp_path / top).mkdir()
    (tmp_path / "sd" / "__init__.py").write_text("")
    (tmp_path / "sd" / "sampling" / "loop.py").write_text("from ..models.unet import UNet\n")
    assert layering_errors(tmp_path) == [] and cycles(tmp_path) == []
    (tmp_path / "sd" / "models" / "unet.py").write_text("from ..sampling import loop\n")
    assert layering_errors(tmp_path) == ["sd.models.unet (models) imports sd.sampling.loop (sampling)"]
    assert cycles(tmp_path) == [["sd.models.unet", "sd.sampling.loop", "sd.models.unet"]]
