"""The fleet's deploy files (compose.yaml, Dockerfile, .dockerignore) and the docs' commands,
checked offline: Docker cannot run here, so what can be read is checked against the code.

Each check is a way a deploy goes wrong without any test noticing: a variable backspace does not
read (silently ignored: the replicas run on SQLite each, or with the wrong lease), a replica that
does not point at the database service, a password committed in compose.yaml, a `.env` baked into
the image, a stop timeout shorter than the drain (Docker's 10 s SIGKILLs runs mid-grace), replicas
labelling their Daytona sandboxes differently (a dead replica's sandboxes never swept), a working
directory the sandbox can read (the server refuses to start), a uv that is not the bootstrap's.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from backspace.config import Settings
from backspace.orchestrator.sandboxes.bwrap import VIEW
from tests.server import ROOT

ALIASES = {field.alias for field in Settings.model_fields.values() if field.alias}
COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
OPERATIONS = ROOT / "docs" / "operations.md"
README = ROOT / "README.md"

# Variables a container may set that are not backspace settings but are read by what it runs:
# the OpenTelemetry SDK reads OTEL_* from the process environment (docs/operations.md).
STANDARD_PREFIXES = ("OTEL_",)
# The official postgres image's documented variables.
POSTGRES_VARIABLES = {
    "POSTGRES_USER",
    "POSTGRES_PASSWORD",
    "POSTGRES_DB",
    "POSTGRES_INITDB_ARGS",
    "POSTGRES_INITDB_WALDIR",
    "POSTGRES_HOST_AUTH_METHOD",
    "PGDATA",
}
# BACKSPACE_* names the docs mention that are not settings; each must really be read somewhere.
NOT_SETTINGS = {
    "BACKSPACE_REFRESH_SCREENSHOTS": "tests/test_web_ui.py",  # re-shoots the README's screenshots
    "BACKSPACE_SANDBOX_ROOT_MARK": "backspace/orchestrator/sandboxes/local.py",  # in a sandbox
    "BACKSPACE_REQUIRE_POSTGRES": "tests/postgres.py",  # CI: a missing PostgreSQL fails
}
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}")


def _interpolated(text: str) -> tuple[str, set[str]]:
    """compose.yaml with each `${NAME...}` replaced by `<NAME>`, and the names it interpolates."""
    names = {m.group(1) for m in INTERPOLATION.finditer(text)}
    return INTERPOLATION.sub(lambda m: f"<{m.group(1)}>", text.replace("$$", "$")), names


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    assert COMPOSE.is_file(), "compose.yaml is missing at the repository's root"
    text, _ = _interpolated(COMPOSE.read_text())
    loaded = yaml.safe_load(text)
    assert isinstance(loaded, dict) and isinstance(loaded.get("services"), dict)
    return loaded


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _replicas(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in compose["services"].items()
        if "build" in service or "backspace" in str(service.get("image", ""))
    }


def _postgres(compose: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    found = [
        (name, s)
        for name, s in compose["services"].items()
        if str(s.get("image", "")).split(":")[0].split("/")[-1] == "postgres"
    ]
    assert len(found) == 1, (
        "compose.yaml needs exactly one service from the official postgres image"
    )
    return found[0]


def _dockerfile_instructions() -> list[tuple[str, str]]:
    assert DOCKERFILE.is_file(), "the Dockerfile is missing at the repository's root"
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def _seconds(value: str) -> float:
    """A compose duration (`90s`, `1m30s`, `2m`) in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|m|s|ms|us)", str(value))
    assert parts and "".join(n + u for n, u in parts) == str(value), f"not a duration: {value!r}"
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 0.000001}
    return sum(float(n) * scale[u] for n, u in parts)


def test_two_replicas_share_the_postgres_service_and_wait_for_it(compose: dict[str, Any]) -> None:
    name, postgres = _postgres(compose)
    assert postgres.get("healthcheck", {}).get("test"), "postgres needs a healthcheck"
    pg_env = _environment(postgres)
    assert set(pg_env) <= POSTGRES_VARIABLES, set(pg_env) - POSTGRES_VARIABLES
    mounts = [str(v) for v in postgres.get("volumes", [])]
    data = [m for m in mounts if m.split(":")[1:2] == ["/var/lib/postgresql/data"]]
    assert data, "the database needs a volume at /var/lib/postgresql/data"
    assert data[0].split(":")[0] in (compose.get("volumes") or {}), "a named volume, declared"
    replicas = _replicas(compose)
    assert len(replicas) >= 2, "two replicas at least"
    for replica_name, replica in replicas.items():
        env = _environment(replica)
        url = urlsplit(env.get("BACKSPACE_DATABASE_URL", ""))
        assert url.scheme in ("postgresql", "postgres"), f"{replica_name}: no PostgreSQL URL"
        assert (url.hostname, url.port or 5432) == (name, 5432), f"{replica_name}: not {name}"
        assert url.username == pg_env["POSTGRES_USER"]
        assert url.path.lstrip("/") == pg_env["POSTGRES_DB"]
        # The password is interpolated from the operator's environment, never written here.
        assert url.password == "<POSTGRES_PASSWORD>" == pg_env["POSTGRES_PASSWORD"], replica_name
        assert replica["depends_on"][name]["condition"] == "service_healthy"
        assert ".env" in [str(f) for f in _as_list(replica.get("env_file"))], replica_name


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, list):
        return [v["path"] if isinstance(v, dict) else v for v in value]
    return [value]


def test_replicas_set_only_variables_backspace_reads(compose: dict[str, Any]) -> None:
    for name, replica in _replicas(compose).items():
        unknown = [
            key
            for key in _environment(replica)
            if key not in ALIASES and not key.startswith(STANDARD_PREFIXES)
        ]
        assert unknown == [], f"{name} sets variables backspace does not read: {unknown}"


def test_compose_interpolates_only_settings_and_the_database_password() -> None:
    _, names = _interpolated(COMPOSE.read_text())
    unknown = sorted(names - ALIASES - {"POSTGRES_PASSWORD"})
    assert unknown == [], f"compose.yaml interpolates variables nobody documents: {unknown}"
    assert "POSTGRES_PASSWORD" in OPERATIONS.read_text(), "docs/operations.md must say to set it"


def test_replicas_listen_on_every_address_and_label_their_sandboxes_alike(
    compose: dict[str, Any],
) -> None:
    image_env = _dockerfile_env()
    instances = set()
    for name, replica in _replicas(compose).items():
        env = {**image_env, **_environment(replica)}
        listen = env.get("HOST")
        assert listen == "0.0.0.0", f"{name}: HOST must be 0.0.0.0 in a container"  # noqa: S104
        instances.add(env.get("BACKSPACE_INSTANCE"))
        assert replica.get("init") is True, f"{name}: init: true, so sandbox zombies are reaped"
    # Default: hostname + database path, so a container each; a dead replica's Daytona
    # sandboxes would carry a label no live replica's janitor looks at.
    assert len(instances) == 1 and None not in instances, instances


def test_the_stop_timeout_covers_the_drain(compose: dict[str, Any]) -> None:
    """uvicorn's wait for open requests, then the runs' grace, then their cleanup (runner.py)."""
    http_grace = _number(r"timeout_graceful_shutdown=(\d+)", "backspace/cli.py")
    cleanup = _number(
        r"asyncio\.wait\(pending, timeout=(\d+)\)", "backspace/orchestrator/runner.py"
    )
    default_grace = Settings.model_fields["shutdown_grace"].default
    for name, replica in _replicas(compose).items():
        grace = float(_environment(replica).get("BACKSPACE_SHUTDOWN_GRACE", default_grace))
        stop = _seconds(replica.get("stop_grace_period", "10s"))  # Docker's default: 10 s
        assert stop >= http_grace + grace + cleanup, (
            f"{name}: stop_grace_period {stop:g} s SIGKILLs runs still in their "
            f"BACKSPACE_SHUTDOWN_GRACE ({grace:g} s after the {http_grace:g} s of open requests, "
            f"then up to {cleanup:g} s to record their end)"
        )


def _number(pattern: str, path: str) -> float:
    found = re.search(pattern, (ROOT / path).read_text())
    assert found, f"{path} no longer has {pattern}: update this test"
    return float(found.group(1))


def _dockerfile_env() -> dict[str, str]:
    env = {}
    for word, rest in _dockerfile_instructions():
        if word == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def test_the_dockerfile_builds_from_files_that_exist_with_the_locked_environment() -> None:
    instructions = _dockerfile_instructions()
    assert instructions[0][0] == "FROM" and instructions[0][1].startswith("python:3.11-slim")
    runs = " ".join(rest for word, rest in instructions if word == "RUN")
    for package in ("git", "bubblewrap", "libseccomp2", "socat"):  # what scripts/bootstrap puts in
        assert re.search(rf"apt-get install[^&;]*\s{package}(\s|$)", runs), package
    bootstrap_uv = re.search(r"^UV_VERSION=(\S+)", (ROOT / "scripts/bootstrap").read_text(), re.M)
    assert bootstrap_uv and f"uv=={bootstrap_uv.group(1)}" in runs, "uv: the bootstrap's version"
    assert re.search(r"uv sync --locked[^&;]*--no-dev", runs), "uv sync --locked --no-dev"
    copied = []
    for word, rest in instructions:
        if word == "COPY" and not rest.startswith("--from"):
            *sources, _ = shlex.split(rest)
            copied += [s for s in sources if not s.startswith("--")]
    assert {"pyproject.toml", "uv.lock"} <= set(copied)
    for source in copied:
        assert (ROOT / source).exists(), f"the Dockerfile copies {source}, which does not exist"
        assert source not in (".", "./") and ".env" not in source, f"COPY {source}: secrets in"
    workdir = Path([rest for word, rest in instructions if word == "WORKDIR"][-1])
    for entry in VIEW:  # backspace refuses to start where every sandbox can read its files
        assert workdir != Path(entry) and Path(entry) not in workdir.parents, workdir
    command = [rest for word, rest in instructions if word in ("CMD", "ENTRYPOINT")]
    assert command and "backspace" in command[-1] and "serve" in command[-1]
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".env", "*.db", ".venv", ".git"} <= set(ignored), ".dockerignore keeps secrets out"


def test_every_backspace_variable_the_docs_name_is_a_setting_or_really_read() -> None:
    for name, where in NOT_SETTINGS.items():
        assert name in (ROOT / where).read_text(), f"{name} is no longer read in {where}"
    for doc in [README, ROOT / ".env.example", *sorted((ROOT / "docs").glob("*.md"))]:
        named = set(re.findall(r"\bBACKSPACE_[A-Z0-9_]*[A-Z0-9]\b", doc.read_text()))
        unknown = sorted(named - ALIASES - set(NOT_SETTINGS))
        assert unknown == [], f"{doc.name} names variables backspace does not read: {unknown}"


def test_the_docs_commands_set_only_settings() -> None:
    """`NAME=value backspace serve`, `export NAME=...`, `-e NAME=...`: each NAME is read."""
    for doc in [README, *sorted((ROOT / "docs").glob("*.md"))]:
        for block in re.findall(r"```[a-z]*\n(.*?)```", doc.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():  # continued lines joined
                if not re.search(r"\bbackspace (serve|run|doctor)\b|scripts/serve|^export ", line):
                    continue
                for name in re.findall(r"(?:^|\s|-e\s)([A-Z][A-Z0-9_]+)=", line):
                    assert name in ALIASES or name.startswith(STANDARD_PREFIXES), (
                        f"{doc.name}: `{line.strip()}` sets {name}, which is not a setting"
                    )


def test_the_readme_lists_every_setting_and_points_to_the_operations_guide() -> None:
    text = README.read_text()
    first_cells = "\n".join(
        line.split("|")[1] for line in text.splitlines() if line.startswith("| `")
    )
    missing = sorted(ALIASES - set(re.findall(r"`([A-Z][A-Z0-9_]+)`", first_cells)))
    assert missing == [], f"settings without a row in the README's table: {missing}"
    section = text.split("## Running several replicas", 1)
    assert len(section) == 2, "the README needs a 'Running several replicas' section"
    assert "docs/operations.md" in section[1].split("\n## ", 1)[0]


def test_the_operations_guide_deploys_replicas_and_says_compose_was_not_run_here() -> None:
    text = OPERATIONS.read_text()
    section = text.split("## Deploying several replicas", 1)[1].split("\n## Metrics", 1)[0]
    assert "TODO" not in section
    for needed in ("compose.yaml", "createdb", "pg_dump", "sqlite3", "SIGTERM", "Last-Event-ID"):
        assert needed in text, needed
    assert re.search(r"compose\.yaml[^.]*(not been|was not|were not|never) (run|started)", text), (
        "say plainly that compose.yaml was not run"
    )
