"""The package's shape (README "Where things are"): rooms by pipeline stage, the rules a
newcomer reads off the tree, checked on the import graph of every module - at module level
and inside functions - so that a misplaced import fails here, by name."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "koa_core"
ROOMS = ("data", "model", "train", "metrics", "infer", "experiments", "report", "book")
CORE = {"koa_core", "errors", "config", "files", "runtime", "locking", "paper"}  # ground floor
# what each room may import (besides itself); a module not named here (the CLI, the
# benchmark) may import anything but what `NEVER` names
ALLOWED = {
    "data": {"koa_core", "errors", "config", "files", "paper"},
    "metrics": {"koa_core", "errors", "config", "files", "paper"},
    "model": {"koa_core", "errors", "config", "files", "paper", "runtime"},
    "train": CORE | {"data", "model", "metrics"},
    "infer": CORE | {"data", "model", "metrics"},
    "experiments": CORE | {"data", "model", "metrics", "train", "infer"},
    "report": CORE | {"data", "model", "metrics", "train", "infer", "experiments"},
    "book": CORE | {"data", "model", "metrics", "train", "infer", "experiments", "report"},
    "errors": set(),
    "files": {"errors"},
    "config": {"errors", "paper"},
    "runtime": {"errors"},
    "locking": {"errors"},
    "paper": set(),  # the paper's printed figures: imports nothing of koa_core
}
NEVER = {
    "train": {"infer", "experiments", "report", "book", "cli", "bench"},
    "infer": {"train", "experiments", "report", "book", "cli", "bench"},
    "experiments": {"report", "book", "cli", "bench"},
    "report": {"book", "cli", "bench"},
    "book": {"cli", "bench"},
    "bench": {"cli", "report", "book", "experiments"},
}
GROUND_FLOOR = "the ground floor"  # how a rule line names every module of CORE
# the only third-party packages imported inside functions: heavy ones a command may not
# need (plots, reports, decoders) and optional extras (koa_core.runtime.require)
LAZY_OK = {"matplotlib", "seaborn", "sklearn", "scipy", "pandas", "pydicom", "onnx",
           "onnxruntime", "onnxscript", "lightly", "pytorch_grad_cam", "papermill",
           "jupytext", "nbformat", "IPython", "tqdm", "torch", "torchvision", "kornia",
           "albumentations", "PIL", "tabulate", "yaml", "importlib"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def room(module: str) -> str:
    """``koa_core.data.cache`` -> ``data``; ``koa_core.errors`` -> ``errors``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "koa_core"


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, inside a function) for every import of ``path``; for
    ``from koa_core.pkg import mod`` the submodule ``koa_core.pkg.mod`` where it is one."""
    tree = ast.parse(path.read_text())
    local = {id(n) for f in ast.walk(tree)
             if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
             for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
    out = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            out += [(a.name, n.lineno, id(n) in local) for a in n.names]
        elif isinstance(n, ast.ImportFrom):
            assert n.level == 0, f"{path}:{n.lineno}: relative import (absolute only)"
            mod = n.module or ""
            subs = [f"{mod}.{a.name}" for a in n.names
                    if (PKG.parent / f"{mod}.{a.name}".replace(".", "/")).with_suffix(".py")
                    .exists() or (PKG.parent / f"{mod}.{a.name}".replace(".", "/")).is_dir()]
            out += [(s, n.lineno, id(n) in local) for s in subs] or \
                [(mod, n.lineno, id(n) in local)]
    return out


def graph() -> dict[str, list[tuple[str, int, bool]]]:
    return {module_name(p): imports(p) for p in sorted(PKG.rglob("*.py"))}


def violations(g: dict[str, list[tuple[str, int, bool]]]) -> list[str]:
    """Every import that breaks a room's rule, as 'module:line imports target (why)'."""
    out = []
    for mod, deps in g.items():
        here = room(mod)
        for target, line, _ in deps:
            if not target.startswith("koa_core"):
                continue
            there = room(target)
            if there == here:
                continue
            if here in ALLOWED and there not in ALLOWED[here]:
                out.append(f"{mod}:{line} imports {target} ({here}/ may import only "
                           f"{', '.join(sorted(ALLOWED[here])) or 'nothing of koa_core'})")
            if there in NEVER.get(here, ()):
                out.append(f"{mod}:{line} imports {target} ({here}/ never imports {there})")
            if there in ("cli",) and here != "cli":
                out.append(f"{mod}:{line} imports {target} (nothing imports the CLI)")
            if there == "book" and here not in ("book", "cli"):
                out.append(f"{mod}:{line} imports {target} (only the CLI imports book)")
    return out


def cycles(g: dict[str, list[tuple[str, int, bool]]]) -> list[list[str]]:
    """Import circles between modules (a package's __init__ importing its own modules is
    not one: the modules are what the package is made of)."""
    edges = {m: {t for t, _, _ in deps if t in g and t != m and not m.startswith(t + ".")
                 and not (t.startswith(m + ".") and (PKG.parent / m.replace(".", "/")).is_dir())}
             for m, deps in g.items()}
    index, low, stack, on, found = {}, {}, [], set(), []
    sys.setrecursionlimit(10_000)

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_every_module_lives_in_a_room():
    flat = sorted(p.stem for p in PKG.glob("*.py"))
    assert flat == sorted(["__init__", "bench", "cli", "config", "errors", "files", "locking",
                           "paper", "runtime"])
    for r in ROOMS:
        init = PKG / r / "__init__.py"
        assert init.exists(), r
        assert "Rule (tests/test_layout.py)" in init.read_text(), r


def rule_line(doc: str, key: str) -> set[str] | None:
    """The rooms named on the docstring line ``key: a, b, c.`` (None without one);
    ``the ground floor`` stands for every module of ``CORE``."""
    lines = [ln[len(key):] for ln in doc.splitlines() if ln.startswith(key)]
    assert len(lines) <= 1, f"{key} twice"
    if not lines:
        return None
    names = {n.strip() for n in lines[0].strip().rstrip(".").split(",")}
    return (names - {GROUND_FLOOR}) | (CORE if GROUND_FLOOR in names else set())


def rule_mismatches(docs: dict[str, str]) -> list[str]:
    """Every room whose ``__init__`` rule lines (``Imports:``, ``Never imports:``) disagree
    with ``ALLOWED`` and ``NEVER``, as 'room: line says ..., the table says ...'."""
    out = []
    for r, doc in docs.items():
        for key, table in (("Imports:", ALLOWED), ("Never imports:", NEVER)):
            said, rule = rule_line(doc, key), table.get(r)
            if said != rule:
                out.append(f"{r}: {key} says {sorted(said or ())}, the table says "
                           f"{sorted(rule or ())}")
    return out


def room_docs() -> dict[str, str]:
    return {r: ast.get_docstring(ast.parse((PKG / r / "__init__.py").read_text())) or ""
            for r in ROOMS}


def test_every_room_states_its_rule_as_the_table_does():
    """Each room's ``__init__`` docstring says what it imports in one checked line, so the
    rule a newcomer reads is the rule the import graph is held to."""
    assert rule_mismatches(room_docs()) == []


def test_a_rule_line_that_disagrees_is_named():
    docs = room_docs()
    docs["data"] = docs["data"].replace("Imports: koa_core,", "Imports: koa_core, model,")
    docs["experiments"] = docs["experiments"].replace(
        "Imports: the ground floor, data, model, metrics, train, infer.",
        "Imports: the ground floor, train.")
    docs["report"] = docs["report"].replace("Never imports:", "Never:")
    bad = rule_mismatches(docs)
    assert [b.split(":")[0] for b in bad] == ["data", "experiments", "report"]
    assert "Imports: says ['config', 'errors', 'files', 'koa_core', 'model', 'paper']" in bad[0]


def test_the_rooms_keep_their_rules():
    assert violations(graph()) == []


def test_no_import_circle():
    assert cycles(graph()) == []


def test_function_local_imports_are_heavy_or_optional_packages():
    """The project's own modules are imported at the top of a module, where the graph shows
    them (the CLI alone imports its commands lazily, for a fast --help); inside functions
    only heavy or optional third-party packages."""
    bad = []
    for mod, deps in graph().items():
        for target, line, local in deps:
            if not local:
                continue
            top = target.split(".")[0]
            if top == "koa_core" and mod != "koa_core.cli":
                bad.append(f"{mod}:{line} imports {target} inside a function")
            elif top != "koa_core" and top not in LAZY_OK and top not in sys.stdlib_module_names:
                bad.append(f"{mod}:{line} imports {target} inside a function")
    assert bad == []


@pytest.mark.parametrize("mod, target, why", [
    ("koa_core.data.cache", "koa_core.train.dataset", "data/ may import only"),
    ("koa_core.model.network", "koa_core.data.preprocess", "model/ may import only"),
    ("koa_core.train.engine", "koa_core.infer.backends", "train/ never imports infer"),
    ("koa_core.infer.predict", "koa_core.train.feed", "infer/ never imports train"),
    ("koa_core.metrics.calibration", "koa_core.model.checkpoint", "metrics/ may import only"),
    ("koa_core.experiments.records", "koa_core.report.published", "never imports report"),
    ("koa_core.infer.evaluate", "koa_core.cli", "nothing imports the CLI"),
    ("koa_core.report.data", "koa_core.book.landing", "only the CLI imports book"),
    ("koa_core.experiments.records", "koa_core.book.build", "experiments/ never imports book"),
])
def test_a_broken_rule_is_named(mod, target, why):
    """The checker is not vacuous: one import added against each rule is reported."""
    g = graph()
    g[mod] = g[mod] + [(target, 1, False)]
    assert any(v.startswith(f"{mod}:1 imports {target}") and why in v for v in violations(g))


def test_a_circle_is_found():
    g = graph()
    g["koa_core.data.index"] = g["koa_core.data.index"] + [("koa_core.data.cache", 1, False)]
    assert ["koa_core.data.cache", "koa_core.data.index"] in cycles(g)


def test_no_private_name_is_imported_from_another_module():
    """A name with a leading underscore belongs to its module; what others need is public."""
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        for n in ast.walk(ast.parse(path.read_text())):
            if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("koa_core"):
                bad += [f"{module_name(path)}:{n.lineno} imports {n.module}.{a.name}"
                        for a in n.names if a.name.startswith("_") and a.name != "__version__"]
    assert bad == []
