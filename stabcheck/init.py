"""`stabcheck init`: look at a project and write a `[tool.stabcheck]` section for it.

It finds the source directories (a `src/` layout, or top-level packages) and the tests directory,
and writes a section that `stabcheck check` accepts as it is (the text is validated by the same
code that reads configuration). `--pre-commit` adds a `.pre-commit-config.yaml` snippet and
`--github` a GitHub Actions workflow.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from stabcheck._files import write_atomic_nofollow
from stabcheck.api import __version__
from stabcheck.config import DEFAULT_EXCLUDE, UsageError, from_mapping

REPO_URL = "https://github.com/stabcheck/stabcheck"
WORKFLOW_PATH = Path(".github/workflows/stabcheck.yml")
_TEST_DIRS = ("tests", "test", "testing")
_NOT_SOURCE = {"docs", "doc", "examples", "example", "benchmarks", "scripts", "notebooks", "fixtures", "tools", "site", *_TEST_DIRS}


@dataclass(frozen=True, slots=True)
class Layout:
    sources: tuple[str, ...]
    tests: str | None


def survey(root: Path) -> Layout:
    """The project's source directories and its tests directory, as paths relative to `root`."""
    skip = {d for d in DEFAULT_EXCLUDE if "*" not in d}

    def packages(under: Path) -> list[str]:
        out = []
        for d in sorted(under.iterdir()) if under.is_dir() else []:
            if d.is_dir() and d.name not in skip and not d.name.startswith(".") and d.name not in _NOT_SOURCE:
                if (d / "__init__.py").is_file() or any(d.glob("*.py")):
                    out.append(d.relative_to(root).as_posix())
        return out

    src = root / "src"
    sources = packages(src) if src.is_dir() else packages(root)
    if not sources and src.is_dir() and any(src.glob("*.py")):
        sources = ["src"]
    if not sources:
        sources = [p.name for p in sorted(root.glob("*.py")) if p.is_file()] or ["."]
    tests = next((d for d in _TEST_DIRS if (root / d).is_dir()), None)
    return Layout(tuple(sources), tests)


def config_section(layout: Layout) -> str:
    paths = " ".join([*layout.sources, *([layout.tests] if layout.tests else [])])
    lines = [
        "[tool.stabcheck]",
        f"# written by `stabcheck init` ({__version__}); check with: stabcheck check {paths}",
        f"# source: {', '.join(layout.sources)}" + (f"; tests: {layout.tests}" if layout.tests else ""),
        'select = ["ALL"]',
        "ignore = []",
        '# stages run by a plain `stabcheck check`: "traced" or "confirm" (which run the entries) are',
        "# honoured only with --config pyproject.toml; or pass --trace / --confirm",
        'stages = ["static"]',
        "timeout = 120",
        '# which findings fail the run: "suspected" (any) or "confirmed" (proven by running the code)',
        'fail-on = "suspected"',
        "max-traces = 3",
    ]
    if layout.tests:
        lines += [
            "",
            "[tool.stabcheck.per-file-ignores]",
            "# tests jit a fresh function per case on purpose",
            f'"{layout.tests}/*" = ["STB501"]',
        ]
    return "\n".join(lines) + "\n"


def pre_commit_snippet() -> str:
    return (
        "# .pre-commit-config.yaml\n"
        "repos:\n"
        f"  - repo: {REPO_URL}\n"
        f"    rev: v{__version__}\n"
        "    hooks:\n"
        "      - id: stabcheck            # static stage: fast, never runs your code\n"
        "      # - id: stabcheck-trace    # opt-in: traces the configured entries (needs jax)\n"
    )


def github_workflow(layout: Layout) -> str:
    paths = " ".join([*layout.sources, *([layout.tests] if layout.tests else [])])
    return f"""name: stabcheck
on:
  push:
    branches: [main]
  pull_request:

permissions:
  contents: read
  security-events: write

jobs:
  stabcheck:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - uses: actions/setup-python@v5
        with:
          python-version: "3.12"
      - run: pip install "stabcheck @ git+{REPO_URL}@v{__version__}"
      # annotations on the pull request's diff, and a summary on the run's page
      - run: stabcheck check {paths} --output-format github
      - if: always()
        run: stabcheck check {paths} --output-format markdown --exit-zero >> "$GITHUB_STEP_SUMMARY"
      # code scanning alerts
      - if: always()
        run: stabcheck check {paths} --output-format sarif --output-file stabcheck.sarif --exit-zero
      - if: always()
        uses: github/codeql-action/upload-sarif@v3
        with:
          sarif_file: stabcheck.sarif
          category: stabcheck
"""


def init_project(path: Path, *, pre_commit: bool = False, github: bool = False, write: bool = False) -> str:
    """The text `stabcheck init` prints; with `write`, also appends the section to pyproject.toml."""
    root = Path(path)
    if not root.is_dir():
        raise UsageError(f"not a directory: {root}")
    layout = survey(root)
    section = config_section(layout)
    _validate(section)
    out: list[str] = []
    if write:
        out.append(_append_section(root / "pyproject.toml", section))
    else:
        out.append(section)
    if pre_commit:
        target = root / ".pre-commit-config.yaml"
        if write and not target.exists():
            write_atomic_nofollow(target, pre_commit_snippet().split("\n", 1)[1], what="the pre-commit config")
            out.append(f"wrote {target}\n")
        else:
            out.append("\n" + pre_commit_snippet())
    if github:
        target = root / WORKFLOW_PATH
        if target.exists():
            out.append(f"\n{target} exists; left unchanged\n")
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            write_atomic_nofollow(target, github_workflow(layout), what="the GitHub workflow")
            out.append(f"\nwrote {target}\n")
    return "".join(out)


def _validate(section: str) -> None:
    table = tomllib.loads(section)["tool"]["stabcheck"]
    from_mapping(table, source="stabcheck init")


def _append_section(pyproject: Path, section: str) -> str:
    old = pyproject.read_text(encoding="utf-8") if pyproject.exists() else ""
    try:
        data = tomllib.loads(old)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{pyproject}: malformed TOML, not changed: {e}") from None
    if "stabcheck" in data.get("tool", {}):
        raise UsageError(f"{pyproject} already has a [tool.stabcheck] section; edit it, or run `stabcheck init` without --write to see the suggestion")
    new = old.rstrip("\n") + "\n\n" + section if old.strip() else section
    try:
        tomllib.loads(new)  # the result must still parse
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{pyproject}: appending [tool.stabcheck] would not parse ({e}); not changed") from None
    write_atomic_nofollow(pyproject, new, what="pyproject.toml")
    return f"added [tool.stabcheck] to {pyproject}\n"
