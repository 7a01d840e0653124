"""The documentation site builds with `mkdocs build --strict` (a broken link or a page missing from the nav fails),
its runnable command blocks run as written, and each Chinese page has exactly its English page's commands.

The rule for authors: a block fenced as ```bash is runnable and must finish in seconds on a CPU with tiny settings;
a command that needs a GPU, the network, real data at full size or more than a minute goes in a ```console (or
```text) block, which is shown and never run. The tutorial's pages run in order in one folder, as a reader would
run them, so a later page may use what an earlier page made; the home page and the FAQ run in folders of their
own. `$LMFORGE_DATA` is the shared data folder (../shared/data from the repository root). Their `lmforge` commands
run through a warm process that forks one per command (tests/cli_server.py), which saves the seconds each would
spend importing torch."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mktestdocs import grab_code_blocks

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
BIN = Path(sys.executable).parent  # the venv's: lmforge, mkdocs and python, as a reader's activated venv has them
DATA = ROOT.parent / "shared" / "data"
RUNNABLE = "bash"


def runnable_blocks(page: Path) -> list[str]:
    return grab_code_blocks(page.read_text(encoding="utf-8"), lang=RUNNABLE)


def nav_pages() -> list[str]:
    """The English pages of mkdocs.yml's nav, in order, relative to docs/."""

    def walk(node):
        if isinstance(node, str):
            yield node
        elif isinstance(node, dict):
            for value in node.values():
                yield from walk(value)
        elif isinstance(node, list):
            for item in node:
                yield from walk(item)

    return list(walk(yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))["nav"]))


TUTORIAL = [p for p in nav_pages() if p.startswith("tutorial/")]
STANDALONE = [p for p in nav_pages() if p in ("index.md", "faq.md", "resources.md")]


def _env(first_on_path: Path = BIN) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PATH=f"{first_on_path}{os.pathsep}{BIN}{os.pathsep}{env.get('PATH', '')}",
        LMFORGE_DATA=str(DATA),
        OMP_NUM_THREADS="1",  # tiny models on a shared 2-core machine: one thread each is faster than two contending
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        MPLBACKEND="Agg",
        NO_MKDOCS_2_WARNING="1",
        LMFORGE_ENERGY="estimate",  # codecarbon takes 1.5 s to start, longer than these runs train
    )
    return env


@pytest.fixture(scope="module")
def warm_bin(tmp_path_factory) -> Path:
    """A folder whose `lmforge` forwards each command to a warm server; the server ends with the module."""
    folder = tmp_path_factory.mktemp("warm")
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "cli_server.py"), str(folder / "socket"), str(folder / "bin")],
        env=_env(), stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert server.stdout.readline().strip() == "ready", "tests/cli_server.py did not start"
    yield folder / "bin"
    server.terminate()
    server.wait(timeout=30)


def run_bash(script: str, cwd: Path, bin_dir: Path) -> subprocess.CompletedProcess:
    """script in bash as a reader's shell runs it (stopping at the first failing command), bin_dir first on PATH."""
    command = ["bash", "-euo", "pipefail", "-c", script]
    return subprocess.run(command, cwd=cwd, env=_env(bin_dir), capture_output=True, text=True, timeout=300)


def run_page(page: str, cwd: Path, bin_dir: Path) -> None:
    """A page's runnable blocks in one bash session (a variable set in one block serves the next), stopping at the
    first failing command; the failure names the block."""
    blocks = runnable_blocks(DOCS / page)
    if any("$LMFORGE_DATA" in b or "${LMFORGE_DATA" in b for b in blocks) and not DATA.is_dir():
        pytest.skip(f"{page} reads $LMFORGE_DATA and {DATA} is missing")
    script = "".join(f'echo "### {page} block {i + 1}" >&2\n{block}\n' for i, block in enumerate(blocks))
    result = run_bash(script, cwd, bin_dir)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


def test_site_builds_strict(tmp_path):
    result = subprocess.run(
        [str(BIN / "mkdocs"), "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"), "-d", str(tmp_path)],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    for page in TUTORIAL + STANDALONE:
        html = Path(page).with_suffix("") / "index.html" if page != "index.md" else Path("index.html")
        assert (tmp_path / html).is_file() and (tmp_path / "zh" / html).is_file(), html  # zh falls back to English


def test_the_warm_lmforge_gives_each_command_its_exit_code_streams_and_folder(tmp_path, warm_bin):
    """Through the warm server, a failing command still fails its page: its code, its stderr, the caller's folder."""
    result = run_bash('lmforge generate nowhere --prompt hi; echo "never"', tmp_path, warm_bin)
    assert result.returncode == 2 and "never" not in result.stdout
    assert result.stderr.startswith("lmforge: error: model nowhere not found") and "Traceback" not in result.stderr
    (tmp_path / "mine.yaml").write_text((ROOT / "src/lmforge/configs/char-small.yaml").read_text())
    ok = run_bash("lmforge estimate --config mine.yaml", tmp_path, warm_bin)  # a path relative to the caller
    assert ok.returncode == 0 and "parameters" in ok.stdout, ok.stderr


@pytest.mark.parametrize("page", STANDALONE)
def test_standalone_page_runs(page, tmp_path, warm_bin):
    run_page(page, tmp_path, warm_bin)


@pytest.fixture(scope="module")
def tutorial_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tutorial")


@pytest.mark.parametrize("page", TUTORIAL)
def test_tutorial_page_runs(page, tutorial_dir, warm_bin):
    assert runnable_blocks(DOCS / page), f"{page} has no runnable block: every step shows commands that run"
    run_page(page, tutorial_dir, warm_bin)


@pytest.mark.parametrize("zh", sorted(DOCS.rglob("*.zh.md")), ids=lambda p: str(p.relative_to(DOCS)))
def test_chinese_page_has_the_english_commands(zh):
    english = zh.with_name(zh.name.removesuffix(".zh.md") + ".md")
    assert english.is_file(), f"{zh.name} translates no page: {english.name} is missing"
    assert runnable_blocks(zh) == runnable_blocks(english)
