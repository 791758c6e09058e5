"""Tests for the book: the runner's pieces (koa_core.book.build), the chapters' shape, the book's
configuration, and the rendered-HTML check (skipped unless a built book and Chromium exist)."""

from __future__ import annotations

import ast
import importlib.util
import re
import shutil
from pathlib import Path

import nbformat
import pytest
import yaml

from koa_core.book import build as book
from koa_core.errors import KoaError

REPO = Path(__file__).resolve().parents[2]
CHAPTERS = sorted((REPO / "notebooks").glob("*.py"))
SKELETON = ["Overview", "Prerequisites", "Imports", "Parameters", "Summary", "References"]


def _load_checker():
    spec = importlib.util.spec_from_file_location("check_book_html",
                                                  REPO / "scripts" / "check_book_html.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def cells() -> dict[str, list]:
    import jupytext

    return {py.stem: jupytext.read(str(py)).cells for py in CHAPTERS}


# ---------------------------------------------------------------- profiles and parameters
def test_eight_chapters():
    assert [p.stem for p in CHAPTERS] == ["01_data", "02_preprocessing", "03_loss",
                                          "04_training", "05_ablation", "06_evaluation",
                                          "07_gradcam", "08_beyond"]


@pytest.mark.parametrize("name, needs_data", [("demo", None), ("paper", True)])
def test_load_profile(name, needs_data):
    prof = book.load_profile(name, REPO)
    assert prof.get("needs_data") is needs_data
    assert {"data_root", "runs_dir", "train_profile", "train_sets", "checkpoint", "seed",
            "n_boot"} <= set(prof["parameters"])


def test_demo_profile_uses_the_bundled_demo_training_and_an_imbalanced_phantom():
    prof = book.load_profile("demo", REPO)
    assert prof["parameters"]["train_profile"] == ["demo"]
    assert prof["phantom"]["proportions"] == "paper"
    assert book.load_profile("paper", REPO)["parameters"]["train_profile"] == ["paper"]


def test_load_profile_errors(tmp_path):
    with pytest.raises(KoaError, match="not found"):
        book.load_profile("nope", REPO)
    bad = tmp_path / "bad.yaml"
    bad.write_text("phantom: {}\n")
    with pytest.raises(KoaError, match="parameters"):
        book.load_profile(str(bad), REPO)


def test_every_profile_parameter_is_used_by_a_chapter():
    declared = set().union(*(book.chapter_parameters(py) for py in CHAPTERS))
    for name in ("demo", "paper"):
        assert set(book.load_profile(name, REPO)["parameters"]) <= declared, name


@pytest.mark.parametrize("items, expected", [
    (["n_boot=200"], {"n_boot": 200}),
    (["train_sets=[train.epochs=3, train.lr=0.01]"],
     {"train_sets": ["train.epochs=3", "train.lr=0.01"]}),
    (["checkpoint=runs/x.safetensors", "seed=1"],
     {"checkpoint": "runs/x.safetensors", "seed": 1}),
    (["data_label=a: b"], {"data_label": "a: b"}),
    ([], {}),
])
def test_parse_sets(items, expected):
    assert book.parse_sets(items) == expected


@pytest.mark.parametrize("bad", ["n_boot", "=3", "a.b=3", "1x=2"])
def test_parse_sets_rejects(bad):
    with pytest.raises(KoaError):
        book.parse_sets([bad])


def test_resolve_parameters_demo_writes_the_phantom_under_the_build(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(book, "ensure_phantom", lambda folder, **kw: seen.update(kw) or folder)
    prof = {"name": "demo", **book.load_profile("demo", REPO)}
    p = book.resolve_parameters(prof, {"n_boot": 10}, None, tmp_path)
    assert Path(p["data_root"]).parent == tmp_path / "data"
    assert seen["proportions"] == "paper"
    assert p["runs_dir"] == str(tmp_path / "runs" / "demo") and p["n_boot"] == 10
    assert p["train_profile"] == ["demo"]


def test_resolve_parameters_paper_needs_data(tmp_path):
    prof = {"name": "paper", **book.load_profile("paper", REPO)}
    with pytest.raises(KoaError, match="--data"):
        book.resolve_parameters(prof, {}, None, tmp_path)
    p = book.resolve_parameters(prof, {"runs_dir": str(tmp_path / "r")}, str(tmp_path), tmp_path)
    assert p["data_root"] == str(tmp_path.resolve()) and p["runs_dir"] == str(tmp_path / "r")
    with pytest.raises(KoaError, match="unknown book parameter"):
        book.resolve_parameters(prof, {"n_bootstrap": 3}, str(tmp_path), tmp_path)


@pytest.mark.parametrize("name", ["demo", "published", "paper"])
def test_bundled_profiles_pass_validation(name):
    book.validate_parameters(book.load_profile(name, REPO)["parameters"])


@pytest.mark.parametrize("sets,match", [
    ({"n_boot": 0}, "n_boot: expected an integer >= 1"),
    ({"n_boot": "many"}, "n_boot: expected an integer"),
    ({"seed": -1}, "seed: expected an integer >= 0"),
    ({"threads": 1.5}, "threads: expected an integer"),
    ({"clahe_images": True}, "clahe_images: expected an integer"),
    ({"train_sets": ["train.epochs=-1"]}, "train.epochs"),
    ({"train_sets": "train.epochs=3"}, "train_sets: expected a list"),
    ({"train_sets": ["epochs"]}, "train_sets: expected a list of SECTION.KEY=VALUE"),
    ({"train_profile": ["no-such-profile"]}, "train_profile"),
    ({"ablation_configs": ["ablation-nothing"]}, "ablation_configs"),
    ({"ablation_configs": []}, None),
    ({"recipe_plans": ["no-such-plan"]}, "recipe_plans: plan not found"),
    ({"recipe_sets": ["model.dropout=1.5"]}, "recipe_sets: .*dropout"),
    ({"runs_dir": 3}, "runs_dir: expected text"),
])
def test_book_parameters_are_validated_before_any_chapter(sets, match, tmp_path):
    prof = {"name": "paper", **book.load_profile("paper", REPO)}
    if match is None:
        book.resolve_parameters(prof, sets, str(tmp_path), tmp_path)
        return
    with pytest.raises(KoaError, match=match) as e:
        book.resolve_parameters(prof, sets, str(tmp_path), tmp_path)
    assert "\n" not in str(e.value) and str(e.value).startswith("book parameter ")


def test_cli_paper_without_data_is_one_line(capsys, tmp_path, monkeypatch):
    from koa_core.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["book", "--profile", "paper", "--root", str(REPO)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("koa: error: ") and "--data" in err[0]


def test_find_book_root(tmp_path):
    assert book.find_book_root(REPO / "notebooks") == REPO
    assert book.find_book_root(tmp_path) == REPO  # falls back to the source checkout


# ---------------------------------------------------------------- the chapters' shape
@pytest.mark.parametrize("py", CHAPTERS, ids=lambda p: p.stem)
def test_exactly_one_parameters_cell(py):
    names = book.chapter_parameters(py)
    assert {"data_root", "runs_dir", "seed"} <= names


@pytest.mark.parametrize("py", CHAPTERS, ids=lambda p: p.stem)
def test_papermill_sees_every_parameter(py, tmp_path):
    """papermill skips a line it cannot parse (e.g. a comment holding '='), and then never
    injects that parameter: every assignment must be visible to it."""
    import papermill

    nb = book.convert(py, tmp_path / f"{py.stem}.ipynb")
    assert set(papermill.inspect_notebook(str(nb))) == book.chapter_parameters(py)


@pytest.mark.parametrize("py", CHAPTERS, ids=lambda p: p.stem)
def test_skeleton(py, cells):
    md = [c.source for c in cells[py.stem] if c.cell_type == "markdown"]
    assert md[0].startswith("# "), "the first cell is the title"
    h2 = [m.group(1).strip() for s in md for m in re.finditer(r"^## (.+)$", s, re.M)]
    order = [h for h in h2 if h in SKELETON]
    assert order == SKELETON, h2
    assert len(h2) > len(SKELETON), "content sections between Parameters and Summary"
    text = "\n".join(md)
    assert re.search(r"^1\. ", text.split("## Overview")[1].split("## ")[0], re.M)
    assert "### What's next" in text.split("## Summary")[1].split("## References")[0]
    assert re.search(r"^- \*\*Time to learn\*\*", text, re.M)


@pytest.mark.parametrize("py", CHAPTERS, ids=lambda p: p.stem)
def test_imports_up_front_and_from_koa_core(py, cells):
    code = [c for c in cells[py.stem] if c.cell_type == "code"]
    assert "koa_core" in code[0].source and "import" in code[0].source
    assert "parameters" in code[1].metadata.get("tags", []), "Parameters right after Imports"
    later = "\n".join(c.source for c in code[1:])
    assert not re.search(r"^(import|from) ", later, re.M), "all imports in the Imports cell"


@pytest.mark.parametrize("py", CHAPTERS, ids=lambda p: p.stem)
def test_no_long_functions_in_notebooks(py, cells):
    for c in cells[py.stem]:
        if c.cell_type != "code":
            continue
        for node in ast.walk(ast.parse(c.source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                assert node.end_lineno - node.lineno + 1 <= 10, f"{node.name} is too long"


@pytest.mark.parametrize("py", CHAPTERS, ids=lambda p: p.stem)
def test_text_speaks_of_the_project_only(py):
    text = py.read_text()
    for word in ("/work", "../shared", "RELATED.md"):
        assert word not in text


@pytest.mark.parametrize("page", [*CHAPTERS, REPO / "book" / "intro.md"], ids=lambda p: p.stem)
def test_tex_math_is_balanced(page):
    """Math is MyST dollar math, typeset offline by the book's own MathJax
    (tests/report/test_mathjax.py): an odd number of ``$`` on a page would swallow its text."""
    assert page.read_text().count("$") % 2 == 0


def test_jupytext_conversion(tmp_path):
    out = book.convert(CHAPTERS[0], tmp_path / "nb" / "01.ipynb")
    nb = nbformat.read(str(out), as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1


def test_hide_injected(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("a = 1", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("a = 2", metadata={"tags": ["injected-parameters"]})]
    path = tmp_path / "x.ipynb"
    nbformat.write(nb, str(path))
    book._hide_injected(path)
    tags = [c.metadata.get("tags") for c in nbformat.read(str(path), as_version=4).cells]
    assert tags == [["parameters"], ["injected-parameters", "remove-input"]]


def test_execute_passes_only_declared_parameters(tmp_path):
    pytest.importorskip("papermill")
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("print(x * 2)")]
    src = tmp_path / "in.ipynb"
    nbformat.write(nb, str(src))
    out = book.execute(src, tmp_path / "out.ipynb", {"x": 21, "unused": 5}, cwd=tmp_path)
    cells = nbformat.read(str(out), as_version=4).cells
    injected = [c for c in cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "unused" not in injected[0].source
    assert "remove-input" in injected[0].metadata["tags"]
    assert cells[-1].outputs[0]["text"].strip() == "42"


def test_saved_notebook_paths_are_relative(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.metadata["papermill"] = {"cwd": str(tmp_path / "_build"),
                                "parameters": {"data_root": str(tmp_path / "_build" / "d")}}
    nb.cells = [nbformat.v4.new_code_cell(f'data_root = "{tmp_path}/_build/d"\nseed = 0',
                                          metadata={"tags": ["injected-parameters"]})]
    path = tmp_path / "x.ipynb"
    nbformat.write(nb, str(path))
    book._hide_injected(path, tmp_path)
    text = path.read_text()
    assert str(tmp_path) not in text and '_build/d' in text


def test_execute_reports_a_failing_cell_in_one_line(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell("1 / 0")]
    nbformat.write(nb, str(tmp_path / "bad.ipynb"))
    with pytest.raises(KoaError, match="ZeroDivisionError"):
        book.execute(tmp_path / "bad.ipynb", tmp_path / "out.ipynb", {}, cwd=tmp_path)


# ---------------------------------------------------------------- book configuration
def test_config_and_toc():
    cfg = yaml.safe_load((REPO / "_config.yml").read_text())
    assert cfg["execute"]["execute_notebooks"] == "off"
    assert cfg["only_build_toc_files"] is True
    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    assert toc["root"] == "book/intro" and (REPO / "book" / "intro.md").exists()
    files = [c["file"] for part in toc["parts"] for c in part["chapters"]]
    assert [f for f in files if f.startswith("book/notebooks/")] == [
        f"book/notebooks/{p.stem}" for p in CHAPTERS]
    assert files[0] == "book/claims" and (REPO / "book" / "claims.md").exists()
    assert [p["caption"] for p in toc["parts"]][:4] == ["The scorecard", "Foundations",
                                                        "Experiments", "Beyond the paper"]
    # the published book carries no footer; the demo's says its numbers are the phantom's
    assert "extra_footer" not in cfg["html"]
    assert "phantom" in book.load_profile("demo", REPO)["footer"]
    assert "footer" not in book.load_profile("published", REPO)


def test_book_config_adds_the_profile_footer(tmp_path):
    assert book.book_config(REPO, {"name": "published"}, tmp_path) == REPO / "_config.yml"
    demo = book.book_config(REPO, {"name": "demo", "footer": "phantom numbers"}, tmp_path)
    cfg = yaml.safe_load(demo.read_text())
    assert cfg["html"]["extra_footer"] == "phantom numbers"
    assert cfg["title"] == yaml.safe_load((REPO / "_config.yml").read_text())["title"]
    # found from the generated file's folder: local extensions must be absolute there
    assert all(Path(v).is_absolute() and Path(v).is_dir()
               for v in cfg["sphinx"]["local_extensions"].values())


def test_convert_collapses_code_and_hides_the_parameters_cell(tmp_path):
    out = book.convert(CHAPTERS[0], tmp_path / "01.ipynb")
    nb = nbformat.read(str(out), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    params = [c for c in code if "parameters" in c.metadata["tags"]]
    assert params and all("remove-input" in c.metadata["tags"] for c in params)
    rest = [c for c in code if "parameters" not in c.metadata["tags"]]
    assert rest and all("hide-input" in c.metadata["tags"] for c in rest)
    assert not any(c.metadata.get("tags") for c in nb.cells if c.cell_type == "markdown")


def _tiny_book(root: Path) -> Path:
    (root / "notebooks").mkdir(parents=True)
    (root / "book" / "profiles").mkdir(parents=True)
    (root / "_config.yml").write_text("title: t\n")
    (root / "_toc.yml").write_text("format: jb-book\nroot: book/intro\n")
    (root / "data").mkdir()
    (root / "data" / "x.txt").write_text("1")
    (root / "book" / "profiles" / "p.yaml").write_text(
        "paths: [data_root]\nparameters:\n  data_root: data\n  runs_dir: ''\n  seed: 0\n")
    (root / "notebooks" / "01_a.py").write_text(
        "# %% tags=[\"parameters\"]\ndata_root = ''\nruns_dir = ''\nseed = 0\n"
        "# %%\nfrom pathlib import Path\n"
        "with open(Path(runs_dir) / 'executions', 'a') as f:\n    f.write('x')\n")
    return root


def test_rebuild_executes_only_chapters_whose_inputs_changed(tmp_path, monkeypatch):
    pytest.importorskip("papermill")
    root = _tiny_book(tmp_path / "b")
    monkeypatch.setattr(book, "write_scorecard", lambda *a, **k: None)
    runs = root / "_build" / "runs" / "p"
    runs.mkdir(parents=True)

    def build():
        logs = []
        book.run_book("p", root=root, html=False, log=logs.append)
        return (runs / "executions").read_text().count("x"), logs

    assert build()[0] == 1
    count, logs = build()
    assert count == 1 and any("unchanged" in m for m in logs)  # nothing changed: kept
    (runs / "other").write_text("a run")  # runs are made from the inputs: not an input
    assert build()[0] == 1
    (root / "data" / "x.txt").write_text("2")  # the data a parameter names changed
    assert build()[0] == 2
    src = root / "notebooks" / "01_a.py"
    src.write_text(src.read_text() + "# %%\n1\n")  # the chapter changed
    assert build()[0] == 3
    assert book.input_stamp(src, {"seed": 0}, root) != book.input_stamp(src, {"seed": 1},
                                                                         root)


def test_make_book_target_and_ignored_outputs():
    mk = (REPO / "Makefile").read_text()
    assert re.search(r"^book: \$\(STAMP\)\n\t.*koa_core\.cli book --profile \$\(PROFILE\)", mk,
                     re.M)
    assert "/book/notebooks/" in (REPO / ".gitignore").read_text().splitlines()


def test_intro_covers_claims_deviations_and_citation():
    text = (REPO / "book" / "intro.md").read_text()
    for must in ("72.06", "0.671", "0.784", "61.84", "ImageNet", "phantom", "ClaheDataset224",
                 "AdamW", "papermill", "jupytext --to ipynb", "10.17632/56rmx5bjcr.1"):
        assert must in text, must
    assert "/work" not in text and "../shared" not in text


# ---------------------------------------------------------------- the HTML check
def test_check_page_accepts_a_clean_page(tmp_path):
    chk = _load_checker()
    (tmp_path / "fig.png").write_bytes(b"png")
    dom = ('<html><body><div class="cell_output"><img src="fig.png"><table></table>'
           '<pre>accuracy 0.5</pre></div></body></html>')
    assert chk.check_page(dom, tmp_path / "page.html") == []


@pytest.mark.parametrize("body, problem", [
    ('<table></table>', "no figure"),
    ('<img src="gone.png"><table></table>', "image file missing"),
    ('<img src="fig.png">', "no table"),
    ('<img src="fig.png"><table></table><pre>Traceback (most recent call last)</pre>',
     "Traceback"),
    ('<img src="fig.png"><table></table><div class="output stderr">warn</div>', "stderr"),
    ('<img src="fig.png"><table></table><div class="cell_output"><pre>KoaError: x</pre></div>',
     "KoaError"),
])
def test_check_page_finds_problems(tmp_path, body, problem):
    chk = _load_checker()
    (tmp_path / "fig.png").write_bytes(b"png")
    problems = chk.check_page(f"<html><body>{body}</body></html>", tmp_path / "p.html")
    assert any(problem in p for p in problems), problems


@pytest.mark.skipif(not (REPO / "_build" / "html" / "book" / "intro.html").exists()
                    or shutil.which("chromium") is None,
                    reason="needs a built book (make book) and Debian's chromium")
def test_built_book_renders_in_chromium():
    chk = _load_checker()
    assert chk.main([str(REPO / "_build" / "html")]) == 0
