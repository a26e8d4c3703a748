"""Settings: defaults, the environment and `.env`, messages that name the variable, secrets."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from backspace.config import Settings, SettingsError, load_settings
from tests.server import ROOT

ALIASES = {field.alias for field in Settings.model_fields.values() if field.alias}
SECRET_FIELDS = [
    name
    for name, field in Settings.model_fields.items()
    if SecretStr in (getattr(field.annotation, "__args__", None) or (field.annotation,))
]
ENV_EXAMPLE = ROOT / ".env.example"


@pytest.fixture(autouse=True)
def clean_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only what a test sets counts: no setting from this process's environment or a `.env`."""
    for name in list(os.environ):
        if name.upper() in ALIASES:
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def python(cwd: Path, code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_defaults() -> None:
    settings = load_settings()
    assert settings.max_sandbox_duration == 600
    assert settings.max_concurrent_runs == 4
    assert settings.sandbox_backend == "local"
    assert settings.model == "claude-sonnet-4-6"
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.require_auth is False and settings.debug is False
    assert settings.log_format == "auto"
    assert settings.db == Path("backspace.db")
    assert settings.local_repos is None
    assert settings.model_configured is False
    assert settings.secrets() == []


def test_daytona_is_the_sandbox_when_its_key_is_set_unless_local_is_asked_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert load_settings(DAYTONA_API_KEY="dtn_key").sandbox_backend == "daytona"
    assert (
        load_settings(DAYTONA_API_KEY="dtn_key", BACKSPACE_SANDBOX="local").sandbox_backend
        == "local"
    )
    with pytest.raises(SettingsError, match="BACKSPACE_SANDBOX=daytona needs DAYTONA_API_KEY"):
        load_settings(BACKSPACE_SANDBOX="daytona")
    monkeypatch.setenv("DAYTONA_API_KEY", "dtn_key")
    assert load_settings().sandbox_backend == "daytona"
    monkeypatch.setenv("BACKSPACE_SANDBOX", "local")
    assert load_settings().sandbox_backend == "local"


def test_the_model_counts_as_configured_with_a_key_or_a_base_url() -> None:
    assert load_settings(ANTHROPIC_API_KEY="sk-ant-x").model_configured
    assert load_settings(ANTHROPIC_BASE_URL="http://127.0.0.1:1").model_configured
    assert not load_settings(ANTHROPIC_API_KEY="").model_configured


def test_the_environment_is_read_case_insensitively_and_by_alias(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MAX_CONCURRENT_RUNS", "7")
    monkeypatch.setenv("backspace_model", "claude-test")
    monkeypatch.setenv("DEBUG", "true")
    settings = load_settings()
    assert (settings.max_concurrent_runs, settings.model, settings.debug) == (
        7,
        "claude-test",
        True,
    )
    # An explicit override wins over the environment.
    assert load_settings(MAX_CONCURRENT_RUNS=2).max_concurrent_runs == 2


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"MAX_CONCURRENT_RUNS": "abc"}, "MAX_CONCURRENT_RUNS: Input should be a valid integer"),
        ({"MAX_CONCURRENT_RUNS": "0"}, "MAX_CONCURRENT_RUNS: Input should be greater than or"),
        ({"max_concurrent_runs": "abc"}, "MAX_CONCURRENT_RUNS: Input should be a valid integer"),
        ({"PORT": "99999"}, "PORT: Input should be less than or equal to 65535"),
        ({"MAX_SANDBOX_DURATION": "0"}, "MAX_SANDBOX_DURATION: Input should be greater than 0"),
        (
            {"BACKSPACE_SANDBOX": "docker"},
            "BACKSPACE_SANDBOX: Input should be 'local' or 'daytona'",
        ),
        ({"BACKSPACE_LOG_FORMAT": "xml"}, "BACKSPACE_LOG_FORMAT: Input should be 'auto', 'json'"),
        ({"BACKSPACE_TOOL_MODE": "x"}, "BACKSPACE_TOOL_MODE: Input should be 'builtin' or"),
        ({"DEBUG": "maybe"}, "DEBUG: Input should be a valid boolean"),
        ({"GITHUB_EMAIL": "not an email"}, "GITHUB_EMAIL: String should match pattern"),
        ({"BACKSPACE_MODEL": ""}, "BACKSPACE_MODEL: String should have at least 1 character"),
        ({"REQUIRE_AUTH": "true"}, "REQUIRE_AUTH=true needs API_KEY: set API_KEY"),
        ({"REQUIRE_AUTH": "true", "API_KEY": ""}, "REQUIRE_AUTH=true needs API_KEY"),
    ],
)
def test_an_invalid_value_names_the_variable_and_what_it_accepts(
    overrides: dict[str, Any], expected: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(**overrides)
    message = str(caught.value)
    assert message.startswith("invalid settings:\n  ")
    assert expected in message, message
    assert "Value error" not in message and "pydantic" not in message.lower()


def test_every_invalid_variable_of_the_environment_is_named_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MAX_CONCURRENT_RUNS", "abc")
    monkeypatch.setenv("PORT", "-1")
    monkeypatch.setenv("BACKSPACE_SANDBOX", "docker")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    lines = str(caught.value).splitlines()[1:]
    assert sorted(line.split(":")[0].strip() for line in lines) == [
        "BACKSPACE_SANDBOX",
        "MAX_CONCURRENT_RUNS",
        "PORT",
    ]


def _rsa_pem() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()


def test_secrets_lists_every_secret_that_is_set() -> None:
    assert len(SECRET_FIELDS) >= 7, SECRET_FIELDS
    # The App's private key must be a key (and comes with GITHUB_APP_ID), the database URL a
    # PostgreSQL URL: both tested below.
    plain = [n for n in SECRET_FIELDS if n not in ("github_app_private_key", "database_url")]
    values = {name: f"secret-{name}-0123456789" for name in plain}
    settings = Settings(**values)  # type: ignore[arg-type]
    assert sorted(settings.secrets()) == sorted(values.values())
    pem = _rsa_pem()
    with_app = load_settings(**values, GITHUB_APP_ID=7, GITHUB_APP_PRIVATE_KEY=pem)
    body = [line for line in pem.splitlines() if line and not line.startswith("-----")]
    assert set(with_app.secrets()) >= {*values.values(), pem.strip(), *body}
    # Unset and empty secrets are not listed.
    partial = load_settings(GITHUB_TOKEN="ghp_0123456789", API_KEY="", SLACK_BOT_TOKEN=None)
    assert partial.secrets() == ["ghp_0123456789"]
    # A secret never shows in the settings' repr.
    assert "ghp_0123456789" not in repr(partial) and "ghp_0123456789" not in str(partial)


def test_a_dotenv_file_in_the_working_directory_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "# settings for this test\n"
        "MAX_CONCURRENT_RUNS=7\n"
        "BACKSPACE_MODEL=claude-from-dotenv   # a comment\n"
        "GITHUB_TOKEN=ghp_fromdotenv0123\n"
        "PORT=9001\n"
    )
    code = (
        "from backspace.config import load_settings\n"
        "s = load_settings()\n"
        "print(s.max_concurrent_runs, s.model, s.secrets(), s.port)\n"
    )
    result = python(tmp_path, code, PORT="9002")
    assert result.returncode == 0, result.stderr
    # The environment wins over `.env`.
    assert result.stdout.split("\n")[0] == "7 claude-from-dotenv ['ghp_fromdotenv0123'] 9002"
    # Another working directory has no `.env`: the defaults.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert python(elsewhere, code).stdout.strip() == "4 claude-sonnet-4-6 [] 8000"


def test_the_cli_reads_the_dotenv_file_and_names_its_bad_variable(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("MAX_CONCURRENT_RUNS=lots\n")
    result = subprocess.run(
        [sys.executable, "-m", "backspace", "doctor"],
        cwd=tmp_path,
        env={
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(tmp_path),
            "PYTHONPATH": str(ROOT),
        },
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "MAX_CONCURRENT_RUNS: Input should be a valid integer" in result.stderr


def _example_variables() -> list[str]:
    if not ENV_EXAMPLE.exists():
        pytest.skip(f"{ENV_EXAMPLE} does not exist yet (another change adds it)")
    return re.findall(r"^([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), flags=re.MULTILINE)


def test_every_setting_has_an_alias_documented_in_env_example() -> None:
    documented = _example_variables()
    assert all(field.alias for field in Settings.model_fields.values())
    missing = sorted(ALIASES - set(documented))
    assert missing == [], f"not in .env.example: {missing}"
    unknown = sorted(set(documented) - ALIASES)
    assert unknown == [], f".env.example names variables backspace does not read: {unknown}"
    assert len(documented) == len(set(documented)), "a variable is listed twice"


def test_env_example_copied_to_dotenv_gives_the_defaults(tmp_path: Path) -> None:
    _example_variables()
    shutil.copy(ENV_EXAMPLE, tmp_path / ".env")
    from_example = load_settings()
    (tmp_path / ".env").unlink()
    assert from_example.model_dump() == load_settings().model_dump()


def test_database_url_must_be_postgresql_and_its_password_is_a_secret() -> None:
    url = "postgresql://backspace:s3cr%2Ft-pw@db.internal:5433/runs"
    settings = load_settings(BACKSPACE_DATABASE_URL=url)
    assert settings.database_url is not None
    assert settings.database_url.get_secret_value() == url
    assert set(settings.secrets()) == {url, "s3cr/t-pw"}  # the URL, and its password decoded
    assert "s3cr" not in repr(settings)
    assert load_settings(BACKSPACE_DATABASE_URL="postgres://h/db").database_url is not None
    assert load_settings(BACKSPACE_DATABASE_URL="").database_url is None
    for bad in ("mysql://u:hunter22@h/db", "db.internal:5432", "sqlite:///x.db"):
        with pytest.raises(SettingsError) as caught:
            load_settings(BACKSPACE_DATABASE_URL=bad)
        message = str(caught.value)
        assert "BACKSPACE_DATABASE_URL" in message and "postgresql://" in message, message
        assert "hunter22" not in message
