"""Unit tests of ``core.runtime.config``: defaults, ``NOTIFY_*`` variables, flags.

The settings are read the way ``server.py`` reads them: flags declared by
``add_options`` on an argparse parser, merged by ``build_config`` over the
environment (passed in as a dict, never the real one) over the defaults.
A bad value, from a flag or from the environment, ends in argparse's usage
error (exit status 2) naming the setting and the value.  The reference
``docs/CONFIGURATION.md`` is what ``reference_markdown`` renders, to the byte.
"""

from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys
from collections.abc import Mapping, Sequence

import pytest

from core.runtime.config import (
    DESCRIPTIONS,
    OPTIONS,
    REFERENCE_PATH,
    Config,
    ConfigError,
    add_options,
    build_config,
    env_name,
    reference_markdown,
)

pytestmark = pytest.mark.timeout(30)


def make_parser() -> argparse.ArgumentParser:
    """A parser with every server flag, as ``server.py`` builds it."""
    parser = argparse.ArgumentParser(prog="server.py")
    add_options(parser)
    return parser


def load(argv: Sequence[str] = (), environ: Mapping[str, str] | None = None) -> Config:
    """The configuration for ``argv`` and ``environ``, as ``server.py`` merges them.

    A bad value ends in ``parser.error`` (``SystemExit(2)`` with the message
    on stderr), for flags and environment variables alike.
    """
    parser = make_parser()
    args = parser.parse_args(list(argv))
    try:
        return build_config(args, environ or {})
    except ConfigError as exc:
        parser.error(str(exc))


def usage_error(capsys: pytest.CaptureFixture[str], argv: Sequence[str] = (), environ: Mapping[str, str] | None = None) -> str:
    """The one error line of a refused configuration (asserts exit status 2)."""
    with pytest.raises(SystemExit) as exit_info:
        load(argv, environ)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.startswith("usage: server.py")
    return err.strip().splitlines()[-1]


# -- defaults ------------------------------------------------------------------------


def test_defaults_match_the_contract():
    config = load()
    assert config.port == 8888
    assert config.address == "127.0.0.1"
    assert config.db_url == "sqlite:///notifications.db"
    assert config.redis_url == ""
    assert config.jwt_secret == "" and config.jwt_public_key == ""
    assert config.keepalive_interval == 30
    assert config.max_devices_per_user == 10
    assert config.demo is False
    assert config.cookie_secure is False
    assert config.processes == 1


def test_no_flags_and_no_environment_give_the_dataclass_defaults():
    assert load() == Config()


def test_unrelated_environment_variables_are_ignored():
    assert load(environ={"PORT": "1234", "NOTIFY": "x", "notify_port": "1234"}) == Config()


# -- the environment -------------------------------------------------------------------


def test_env_name_is_notify_upper_snake():
    assert env_name("--db-url") == "NOTIFY_DB_URL"
    assert env_name("--max-devices-per-user") == "NOTIFY_MAX_DEVICES_PER_USER"


#: (flag, environment value, resulting attribute value): one row per flag.
ENV_VALUES = {
    "--port": ("9001", 9001),
    "--address": ("0.0.0.0", "0.0.0.0"),
    "--db-url": ("postgresql://u@db:5432/notify", "postgresql://u@db:5432/notify"),
    "--redis-url": ("redis://cache:6379/2", "redis://cache:6379/2"),
    "--redis-namespace": ("tenant-a.blue_2", "tenant-a.blue_2"),
    "--jwt-secret": ("s3cret", "s3cret"),
    "--jwt-public-key": ("/etc/notify/key.pem", "/etc/notify/key.pem"),
    "--keepalive-interval": ("2.5", 2.5),
    "--max-devices-per-user": ("3", 3),
    "--demo": ("true", True),
    "--history-days": ("1.5", 1.5),
    "--cookie-secure": ("1", True),
    "--token-ttl": ("120", 120),
    "--max-buffer-kb": ("64", 64),
    "--max-body-kb": ("16", 16),
    "--retry-ms": ("500", 500),
    "--log-level": ("debug", "debug"),
    "--processes": ("4", 4),
    "--max-header-kb": ("8", 8),
    "--idle-timeout": ("5.5", 5.5),
    "--body-timeout": ("2", 2.0),
    "--publish-rate": ("12.5", 12.5),
    "--publish-burst": ("40", 40),
    "--write-rate": ("2.5", 2.5),
    "--write-burst": ("7", 7),
    "--cors-origins": ("https://app.example, http://localhost:3000", "https://app.example,http://localhost:3000"),
    "--max-connections": ("5000", 5000),
    "--idempotency-ttl": ("3600", 3600.0),
    "--jwt-audience": ("notify-api", "notify-api"),
    "--jwt-issuer": ("https://id.example", "https://id.example"),
}


def attribute(flag: str) -> str:
    """The Config attribute a flag sets: ``--db-url`` -> ``db_url``."""
    return flag.lstrip("-").replace("-", "_")


def test_every_flag_has_an_environment_row():
    assert sorted(ENV_VALUES) == sorted(flag for flag, _kind, _help in OPTIONS)


@pytest.mark.parametrize("flag", sorted(ENV_VALUES))
def test_environment_variable_feeds_its_setting(flag):
    raw, expected = ENV_VALUES[flag]
    config = load(environ={env_name(flag): raw})
    assert getattr(config, attribute(flag)) == expected


@pytest.mark.parametrize("raw, expected", [("yes", True), ("on", True), ("TRUE", True), ("0", False), ("false", False), ("", False)])
def test_boolean_environment_values(raw, expected):
    assert load(environ={"NOTIFY_DEMO": raw}).demo is expected


# -- flags win over the environment ------------------------------------------------------


def test_flag_wins_over_environment():
    config = load(["--port", "7000", "--db-url", "sqlite:///flag.db"], {"NOTIFY_PORT": "9000", "NOTIFY_DB_URL": "sqlite:///env.db"})
    assert (config.port, config.db_url) == (7000, "sqlite:///flag.db")


def test_boolean_flag_wins_over_false_environment():
    assert load(["--demo"], {"NOTIFY_DEMO": "false"}).demo is True


def test_valid_flag_wins_over_invalid_environment():
    assert load(["--port", "7000"], {"NOTIFY_PORT": "abc"}).port == 7000


def test_flags_and_environment_combine():
    config = load(["--port", "7000"], {"NOTIFY_ADDRESS": "0.0.0.0"})
    assert (config.port, config.address) == (7000, "0.0.0.0")


@pytest.mark.parametrize("url", ["sqlite:///path/to/notify.db", "sqlite:///:memory:", "postgresql://user@host:5432/db", "postgres://user:pw@host/db"])
def test_database_urls_of_the_contract_are_accepted(url):
    assert load(["--db-url", url]).db_url == url


@pytest.mark.parametrize("url", ["", "redis://localhost:6379/0", "rediss://secure:6380/1"])
def test_redis_urls_are_accepted(url):
    assert load(["--redis-url", url]).redis_url == url


# -- bad values ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--port", "0"], "argument --port: must be greater than 0, got '0'"),
        (["--port", "-1"], "argument --port: must be greater than 0, got '-1'"),
        (["--port", "x"], "argument --port: invalid positive int value: 'x'"),
        (["--db-url", "mysql://user@host/db"], "argument --db-url: expected sqlite:///"),
        (["--db-url", "notifications.db"], "argument --db-url: expected sqlite:///"),
        (["--redis-url", "http://x"], "argument --redis-url: expected redis://"),
        (["--redis-namespace", "a:b"], "argument --redis-namespace: expected 1..64 letters, digits, '_', '.' or '-'"),
        (["--redis-namespace", "x" * 65], "argument --redis-namespace: expected 1..64 letters, digits"),
        (["--keepalive-interval", "0"], "argument --keepalive-interval: must be greater than 0"),
        (["--max-devices-per-user", "many"], "argument --max-devices-per-user: invalid positive int value: 'many'"),
        (["--log-level", "loud"], "--log-level: expected debug, info, warning or error, got 'loud'"),
        (["--publish-rate", "-1"], "argument --publish-rate: must be a finite number, 0 or more, got '-1'"),
        (["--publish-rate", "nan"], "argument --publish-rate: must be a finite number, 0 or more, got 'nan'"),
        (["--publish-rate", "inf"], "argument --publish-rate: must be a finite number, 0 or more, got 'inf'"),
        (["--publish-burst", "1.5"], "argument --publish-burst: invalid non-negative int value: '1.5'"),
        (["--write-rate", "-1"], "argument --write-rate: must be a finite number, 0 or more, got '-1'"),
        (["--write-burst", "1.5"], "argument --write-burst: invalid non-negative int value: '1.5'"),
        (["--idle-timeout", "0"], "argument --idle-timeout: must be greater than 0"),
        (["--cors-origins", "https://app.example/"], "argument --cors-origins: expected http(s)://host[:port] without a path, got 'https://app.example/'"),
        (["--cors-origins", "app.example"], "argument --cors-origins: expected http(s)://host[:port]"),
        (["--cors-origins", "*,https://app.example"], "argument --cors-origins: '*' (any origin, without credentials) cannot be combined"),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else "",
)
def test_bad_flag_value_is_a_usage_error_naming_the_flag(capsys, argv, fragment):
    message = usage_error(capsys, argv)
    assert message.startswith("server.py: error: ")
    assert fragment in message


@pytest.mark.parametrize(
    "variable, raw, fragment",
    [
        ("NOTIFY_PORT", "abc", "NOTIFY_PORT: invalid positive int value: 'abc'"),
        ("NOTIFY_PORT", "0", "NOTIFY_PORT: must be greater than 0, got '0'"),
        ("NOTIFY_DB_URL", "mysql://user@host/db", "NOTIFY_DB_URL: expected sqlite:///"),
        ("NOTIFY_REDIS_URL", "http://x", "NOTIFY_REDIS_URL: expected redis://"),
        ("NOTIFY_KEEPALIVE_INTERVAL", "soon", "NOTIFY_KEEPALIVE_INTERVAL: invalid positive float value: 'soon'"),
        ("NOTIFY_DEMO", "maybe", "NOTIFY_DEMO: expected true or false, got 'maybe'"),
        ("NOTIFY_LOG_LEVEL", "loud", "--log-level: expected debug, info, warning or error, got 'loud'"),
    ],
)
def test_bad_environment_value_is_a_usage_error_naming_the_variable(capsys, variable, raw, fragment):
    message = usage_error(capsys, environ={variable: raw})
    assert message.startswith("server.py: error: ")
    assert fragment in message


def test_limit_defaults_budget_publishing_and_writes_and_leave_cors_off():
    config = load()
    assert (config.publish_rate, config.publish_burst, config.cors_origins) == (200, 0, "")
    assert (config.write_rate, config.write_burst) == (20, 0)
    assert (config.max_header_kb, config.idle_timeout, config.body_timeout) == (32, 75, 30)


def test_cors_origins_are_lowercased_and_deduplicated():
    config = load(["--cors-origins", "HTTPS://App.Example:8443,https://app.example:8443, http://[::1]:3000"])
    assert config.cors_origins == "https://app.example:8443,http://[::1]:3000"


def test_cors_origins_star_alone_is_accepted():
    assert load(environ={"NOTIFY_CORS_ORIGINS": " * "}).cors_origins == "*"


def test_non_numeric_port_in_environment_says_what_was_expected(capsys):
    message = usage_error(capsys, environ={"NOTIFY_PORT": "abc"})
    assert message == "server.py: error: NOTIFY_PORT: invalid positive int value: 'abc'"


def test_unsupported_database_scheme_says_what_is_supported(capsys):
    message = usage_error(capsys, ["--db-url", "mysql://"])
    assert "sqlite:///" in message and "postgresql://" in message


# -- the configuration reference (docs/CONFIGURATION.md) --------------------------------

REPOSITORY = pathlib.Path(__file__).resolve().parent.parent


def test_every_flag_has_a_description_and_no_description_names_an_unknown_flag():
    assert sorted(DESCRIPTIONS) == sorted(flag for flag, _kind, _help in OPTIONS)


def test_reference_has_one_row_per_flag_with_its_variable_and_default():
    rows = [line for line in reference_markdown().splitlines() if line.startswith("| `--")]
    assert [row.split(" | ")[0] for row in rows] == [f"| `{flag}`" for flag, _kind, _help in OPTIONS]
    assert "| `--db-url` | `NOTIFY_DB_URL` | `sqlite:///notifications.db` |" in reference_markdown()
    assert "| `--demo` | `NOTIFY_DEMO` | off |" in reference_markdown()
    assert "| `--redis-url` | `NOTIFY_REDIS_URL` | empty |" in reference_markdown()


def test_configuration_document_is_what_the_reference_renders():
    # When this fails: python -m core.runtime.config > docs/CONFIGURATION.md
    document = (REPOSITORY / REFERENCE_PATH).read_text(encoding="utf-8")
    assert document == reference_markdown()


def test_module_run_as_a_script_prints_the_reference():
    result = subprocess.run(
        [sys.executable, "-m", "core.runtime.config"], cwd=REPOSITORY, capture_output=True, text=True, timeout=20, check=True
    )
    assert result.stdout == reference_markdown()
