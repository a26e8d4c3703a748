"""A starting `.backspace.toml` for a repository that has none, by the ecosystem it shows.

The pull request body suggests it, so the next run can set the project up and verify itself.
Detection reads only the names of the tracked files at the top level.
"""

from __future__ import annotations

STARTERS: dict[str, tuple[tuple[str, ...], str]] = {
    "Python": (
        ("pyproject.toml", "setup.py", "setup.cfg", "requirements.txt"),
        """[setup]
run = "python3 -m venv .venv && .venv/bin/pip install -e '.[dev]'"
cache_key = ["pyproject.toml", "requirements*.txt", "setup.py", "setup.cfg"]
maintenance = ".venv/bin/pip install -e . --no-deps"
[network]
setup = ["pypi.org", "files.pythonhosted.org"]
[verify]
run = [".venv/bin/python -m pytest -q"]
""",
    ),
    "Node": (
        ("package.json",),
        """[setup]
run = "npm ci"
cache_key = ["package.json", "package-lock.json"]
[network]
setup = ["registry.npmjs.org"]
[verify]
run = ["npm test"]
""",
    ),
    "Go": (
        ("go.mod",),
        """[setup]
run = "go mod download"
cache_key = ["go.mod", "go.sum"]
[network]
setup = ["proxy.golang.org", "sum.golang.org"]
[verify]
run = ["go vet ./...", "go test ./..."]
""",
    ),
    "Rust": (
        ("Cargo.toml",),
        """[setup]
run = "cargo fetch"
cache_key = ["Cargo.toml", "Cargo.lock"]
[network]
setup = ["index.crates.io", "static.crates.io"]
[verify]
run = ["cargo test --offline"]
""",
    ),
}


def detect(top_level: set[str]) -> str | None:
    """The first ecosystem whose marker files the repository has at its root."""
    for name, (markers, _) in STARTERS.items():
        if top_level.intersection(markers):
            return name
    return None


def suggestion(top_level: set[str]) -> str | None:
    """The PR body's paragraph proposing a starting file, or None for an unknown ecosystem."""
    found = detect(top_level)
    if found is None:
        return None
    text = STARTERS[found][1]
    return (
        "## Environment\n\nThis repository has no `.backspace.toml`, so nothing was installed "
        "and backspace could not run its tests. It looks like a "
        f"{found} project; a starting file (check the commands, then commit it at the root):\n\n"
        f"```toml\n{text}```"
    )
