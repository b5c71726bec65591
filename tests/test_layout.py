"""The package's import graph: no cycles, and no import points up a layer (the loss never imports the
trainer, data never imports the engine, ...). Every import counts, also those inside functions."""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "supcon_fast"

# A unit (top-level module or subpackage) may import units of lower layers and itself only.
LAYERS = {
    "_C": -1,
    "reference": 0, "provenance": 0, "distributed": 0, "ops": 0, "queue": 0,
    "loss": 1, "models": 1, "data": 1, "testing": 1,
    "engine": 2, "schedule_model": 2,
    "bench": 3, "robustness": 3, "train": 3,
    "sweep": 4,
}
API = "loss"   # `from supcon_fast import supcon_loss`: the package's own names are the loss API


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every supcon_fast module `path` imports (absolute names; `from X import name` counts X.name
    when that is a module, else X)."""
    mod = module_name(path)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("supcon_fast")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if not base.startswith("supcon_fast"):
                continue
            for a in node.names:
                full = f"{base}.{a.name}"
                out.add(full if is_module(full) else base)
    return out


def is_module(name: str) -> bool:
    p = PKG.parent.joinpath(*name.split("."))
    return p.with_suffix(".py").exists() or (p / "__init__.py").exists() or name.endswith("._C")


def unit(name: str) -> str:
    parts = name.split(".")
    return API if len(parts) == 1 else parts[1]


def graph() -> dict[str, set[str]]:
    return {module_name(p): imported_modules(p) for p in PKG.rglob("*.py")}


def test_every_unit_has_a_layer():
    g = graph()
    # the parser sees relative, lazy and `from package import module` imports
    assert {"supcon_fast.data.memory", "supcon_fast.distributed"} <= g["supcon_fast.engine.data"]
    assert "supcon_fast.data.dali_loaders" in g["supcon_fast.data"]          # inside functions
    assert "supcon_fast.engine.config" in g["supcon_fast.train"]
    units = {unit(m) for m in g if m != "supcon_fast"}
    assert units <= set(LAYERS), f"units without a layer in this test: {sorted(units - set(LAYERS))}"


def test_no_import_points_up_a_layer():
    bad = []
    for mod, deps in graph().items():
        if mod == "supcon_fast":
            continue
        for dep in deps:
            if unit(dep) != unit(mod) and LAYERS[unit(dep)] >= LAYERS[unit(mod)]:
                bad.append(f"{mod} -> {dep}")
    assert not bad, "imports that point up or sideways: " + ", ".join(sorted(bad))


def test_no_import_cycles():
    """Module level. A module's import of its own ancestor package is left out: Python imports the
    package first anyway, and the facade (`supcon_fast/__init__.py`) re-exports the loss API."""
    full = graph()
    g = {m: {d for d in deps if d in full and not m.startswith(d + ".")} for m, deps in full.items()}
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for d in sorted(g[m]):
            if state.get(d) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = "done"

    for m in sorted(g):
        if m not in state:
            visit(m)
