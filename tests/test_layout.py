"""The layering the project promises: weightsim never imports Prefect, its
modules import each other without cycles, and reading tables pulls in no
training code."""
import ast
import pathlib
import subprocess
import sys

PKG = pathlib.Path(__file__).resolve().parents[1] / "weightsim"


def _graph() -> dict[str, set[str]]:
    """weightsim's modules and what each imports; a subpackage (``datasets/``) is one module."""
    sources = {p.stem: [p] for p in PKG.glob("*.py")}
    sources |= {p.parent.name: sorted(p.parent.glob("*.py")) for p in PKG.glob("*/__init__.py")}
    mods = set(sources)
    graph = {}
    for mod, paths in sources.items():
        deps = set()
        for p in paths:
            deps |= _imports(p, inside=p.parent != PKG)
        graph[mod] = (deps & mods) - {mod}
    return graph


def _imports(p: pathlib.Path, inside: bool) -> set[str]:
    """The weightsim modules that ``p`` imports (``inside``: ``p`` is in a subpackage)."""
    deps, top = set(), 2 if inside else 1  # the relative level that reaches weightsim itself
    for node in ast.walk(ast.parse(p.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == top:
            deps |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("weightsim."):
            deps.add(node.module.split(".")[1])
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            assert not any(n.split(".")[0] == "prefect" for n in names), f"{p.name} imports prefect"
    return deps


def test_no_import_cycle_among_weightsim_modules():
    graph, state, cycles = _graph(), {}, []

    def visit(v, path):
        state[v] = 1
        for w in sorted(graph[v]):
            if state.get(w) == 1:
                cycles.append(" -> ".join([*path, v, w]))
            elif not state.get(w):
                visit(w, [*path, v])
        state[v] = 2

    for v in sorted(graph):
        if not state.get(v):
            visit(v, [])
    assert not cycles, cycles


def test_reading_tables_imports_no_training_code():
    code = ("import sys, weightsim.tables, weightsim.scan, weightsim.query; "
            "print(sorted(m for m in sys.modules if m.startswith('weightsim')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = ast.literal_eval(out)
    assert not {"weightsim.training", "weightsim.engine", "weightsim.sweep", "weightsim.datasets"} & set(loaded)


def _loaded(modules: str, prefix: str = "weightsim") -> set[str]:
    code = f"import sys, {modules}; print(sorted(m for m in sys.modules if m.startswith({prefix!r})))"
    return set(ast.literal_eval(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                               check=True).stdout))


def test_statistics_import_no_training_engine_or_dataset_code():
    loaded = _loaded("weightsim.analysis, weightsim.report, weightsim.findings, weightsim.htt, weightsim.similarity")
    assert not {m for m in loaded if m.startswith(("weightsim.engine", "weightsim.training", "weightsim.datasets",
                                                   "weightsim.sweep"))}, loaded


def test_options_are_the_ground_floor():
    """``weightsim.config`` imports no weightsim module but ``errors``, and no torch."""
    assert _loaded("weightsim.config") == {"weightsim", "weightsim.config", "weightsim.errors"}
    assert not _loaded("weightsim.config", "torch")
    assert _graph()["config"] == {"errors"}


def test_no_test_tools_in_production_code():
    root = PKG.parent
    for p in [*PKG.rglob("*.py"), *(root / "flows").rglob("*.py"), *(root / "tasks").rglob("*.py")]:
        for node in ast.walk(ast.parse(p.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] in ("unittest", "pytest") for n in names), f"{p} imports {names}"


def test_every_document_the_code_cites_is_in_the_repository():
    """Citations such as ``docs/method.md §2–3`` name a file of the repository
    and a section it has; the shared METHOD.md/DESIGN.md are no longer cited."""
    import re

    root = PKG.parent
    files = [p for d in ("weightsim", "flows", "tasks", "benchmarks", "deployments", "docker", "tests")
             for p in (root / d).rglob("*") if p.is_file() and p.suffix in (".py", ".md", ".yaml", ".toml", "")]
    files.append(root / "README.md")
    cited = set()
    for p in files:
        text = p.read_text(errors="replace")
        if p.name != "test_layout.py":
            assert not re.search(r"(?<![\w/])(METHOD|DESIGN)\.md", text), f"{p} cites METHOD.md/DESIGN.md"
        cited |= {(m.group(1), m.group(2)) for m in re.finditer(r"(docs/\w+\.md)(?:\)?,? §(\d+))?", text)}
    assert {"docs/method.md", "docs/design.md"} <= {c for c, _ in cited}
    for doc, section in cited:
        assert (root / doc).is_file(), f"{doc} is cited but missing"
        if section:
            assert re.search(rf"^## {section}\. ", (root / doc).read_text(), re.M), f"{doc} has no §{section}"
