"""The documentation points at things that exist: every relative link and image in README.md and docs/
resolves (with its #anchor, GitHub's heading slugs), and every repository path (`sd/models/unet.py`) or
module name (`sd.sampling.pipeline.slerp`) quoted in backticks there or in the notebooks' text names a
file, module or top-level name that is really there. A file moved without its documentation fails here."""
import ast
import json
import re
from functools import lru_cache
from pathlib import Path

import pytest

from tutorials.clean_outputs import merged_streams, redraws

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NOTEBOOKS = sorted((ROOT / "tutorials").glob("*.ipynb"))
TOPS = ("rectflow", "toy", "sd", "tests", "tutorials", "bench", "docs")

LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)\)")
CODE_BLOCK = re.compile(r"^```.*?^```", re.S | re.M)
TICKED = re.compile(r"`([^`\n]+)`")
FILE_TYPES = {"json", "png", "npz", "txt", "md", "py", "ipynb", "safetensors", "pth", "bin", "ckpt"}   # rectflow.json is a file


def slug(heading):
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page):
    text = CODE_BLOCK.sub("", page.read_text())
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, re.M)}


def broken_links(page):
    bad = []
    text = CODE_BLOCK.sub("", page.read_text())
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, fragment = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            bad.append(f"{page.name}: {target} (no such file)")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            bad.append(f"{page.name}: {target} (no heading with that anchor)")
    return bad


@lru_cache(maxsize=None)
def top_level_names(module_file):
    names = set()
    for node in ast.parse(Path(module_file).read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def missing_reference(token, root=ROOT):
    """None if the backticked token names something real, else why not. Paths: `sd/models/unet.py`
    (optionally `:name` or `::test`); modules: `sd.sampling.pipeline.slerp` (the first name after the
    longest module prefix must be defined or imported at that module's top level)."""
    token = token.strip().rstrip("/").split("(")[0].split(" ")[0]
    if "/" in token and token.split("/")[0] in TOPS and "*" not in token:
        path = token.split("::")[0].split(":")[0]
        return None if (root / path).exists() else f"{token}: no such path"
    if re.fullmatch(r"(rectflow|toy|sd)(\.\w+)+", token) and token.rsplit(".", 1)[1] not in FILE_TYPES:
        parts, i, module_file = token.split("."), 0, None
        for i in range(len(parts), 0, -1):
            base = root.joinpath(*parts[:i])
            if base.with_suffix(".py").exists():
                module_file = base.with_suffix(".py")
                break
            if (base / "__init__.py").exists():
                module_file = base / "__init__.py"
                break
        rest = parts[i:]
        if module_file is None:
            return f"{token}: no such module"
        if rest and rest[0] not in top_level_names(str(module_file)):
            return f"{token}: {'.'.join(parts[:i])} has no {rest[0]}"
    return None


def prose(page):
    if page.suffix == ".ipynb":
        cells = json.loads(page.read_text())["cells"]
        return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    return CODE_BLOCK.sub("", page.read_text())


def test_every_relative_link_and_image_resolves():
    assert [b for page in PAGES for b in broken_links(page)] == []


@pytest.mark.parametrize("page", PAGES + NOTEBOOKS, ids=lambda p: p.name)
def test_every_quoted_path_and_module_exists(page):
    bad = [why for token in TICKED.findall(prose(page)) if (why := missing_reference(token))]
    assert bad == []


def test_readme_starts_short_and_reaches_every_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in LINK.findall(readme)}
    assert [p.name for p in PAGES[1:] if p.resolve() not in linked] == []


def test_the_checks_see_a_broken_link_anchor_path_and_module(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "sd" / "models").mkdir(parents=True)
    (tmp_path / "sd" / "__init__.py").write_text("")
    (tmp_path / "sd" / "models" / "__init__.py").write_text("")
    (tmp_path / "sd" / "models" / "unet.py").write_text("class UNet:\n    pass\n")
    (tmp_path / "docs" / "a.md").write_text("# A page: `python -m x`\n")
    page = tmp_path / "README.md"
    page.write_text("[a](docs/a.md#a-page-python--m-x) ![img](docs/missing.png) [b](docs/a.md#nope)\n")
    assert broken_links(page) == ["README.md: docs/missing.png (no such file)",
                                  "README.md: docs/a.md#nope (no heading with that anchor)"]
    assert missing_reference("sd/models/unet.py:UNet", tmp_path) is None
    assert missing_reference("sd.models.unet.UNet", tmp_path) is None
    assert missing_reference("sd/unet.py", tmp_path) == "sd/unet.py: no such path"
    assert missing_reference("sd.models.unet.Encoder", tmp_path) == "sd.models.unet.Encoder: sd.models.unet has no Encoder"


def test_committed_notebook_outputs_are_readable():
    """No progress-bar redraws (run tutorials/clean_outputs.py after executing), no tqdm IProgress warning,
    no path of the machine that ran them."""
    bad = []
    for nb in NOTEBOOKS:
        for cell in json.loads(nb.read_text())["cells"]:
            texts = ["".join(out.get("text", [])) for out in cell.get("outputs", [])]
            bad += [f"{nb.name}: {t.strip()[:80]!r}" for t in texts
                    if "\r" in t or "TqdmWarning" in t or re.search(r"/(root|work|home)/", t)]
            lines = [line for t in texts for line in t.split("\n")]
            bad += [f"{nb.name}: a redraw of {b[:40]!r}" for a, b in zip(lines, lines[1:]) if redraws(a, b)]
    assert bad == []


def test_the_readability_check_sees_progress_bar_redraws():
    frames = ["1-rf:  10%|█         | 300/3000 [00:02<00:20, 130it/s]", "1-rf:  20%|██        | 600/3000 [00:04<00:17]"]
    assert redraws(*frames) and not redraws(frames[1], frames[0])             # a new loop starts from fewer steps
    assert not redraws(frames[0], "2-rf:  20%|██        | 600/3000 [00:04<00:17]")
    cell = {"outputs": [{"output_type": "stream", "name": "stderr", "text": [f]} for f in frames]}
    assert ["".join(o["text"]) for o in merged_streams(cell["outputs"])] == ["\r".join(frames)]
