"""Settings: environment over config.<env>.yaml over config.yaml over defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from podcron.config import Settings, load


def test_defaults_without_files_or_environment(tmp_path: Path) -> None:
    settings = load({"PODCRON_CONFIG_DIR": str(tmp_path)})
    assert settings == Settings()
    assert settings.shutdown_timeout_seconds == 25.0
    assert settings.allowed_modules == ()


def test_precedence(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(
        "allowedModules: [base.*]\nworkerThreads: 2\nlogFormat: text\n"
    )
    (tmp_path / "config.prod.yaml").write_text("workerThreads: 4\nallowedCIDRs: [10.0.0.0/8]\n")
    settings = load(
        {
            "PODCRON_CONFIG_DIR": str(tmp_path),
            "PODCRON_ENV": "prod",
            "PODCRON_WORKER_THREADS": "6",
            "PODCRON_TRUSTED_PROXIES": "10.1.0.1/32, 10.1.0.2/32",
        }
    )
    assert settings.allowed_modules == ("base.*",)
    assert settings.log_format == "text"
    assert settings.worker_threads == 6
    assert settings.allowed_cidrs == ("10.0.0.0/8",)
    assert settings.trusted_proxies == ("10.1.0.1/32", "10.1.0.2/32")


@pytest.mark.parametrize(
    ("content", "environ", "message"),
    [
        ("nope: 1\n", {}, "unknown settings"),
        ("", {"PODCRON_LOG_FORMAT": "xml"}, "logFormat"),
        ("", {"PODCRON_WORKER_THREADS": "many"}, "workerThreads"),
        ("allowedModules: 3\n", {}, "allowedModules"),
        ("", {"PODCRON_RUN_HISTORY_LIMIT": "-1"}, r"runHistoryLimit must be from 0 \(off\)"),
        ("runHistoryLimit: 5000\n", {}, "runHistoryLimit must be from 0 .* to 1000"),
    ],
    ids=[
        "unknown-key",
        "bad-log-format",
        "not-a-number",
        "not-a-list",
        "negative-history",
        "history-too-long",
    ],
)
def test_bad_settings_are_named(
    tmp_path: Path, content: str, environ: dict[str, str], message: str
) -> None:
    (tmp_path / "config.yaml").write_text(content)
    with pytest.raises(ValueError, match=message):
        load({"PODCRON_CONFIG_DIR": str(tmp_path)} | environ)


@pytest.mark.parametrize(
    ("content", "environ", "message"),
    [
        (
            "logLevel: INFO\n  workerThreads: [2\n",
            {},
            r"config\.yaml: not valid YAML \(.* at line 2, column \d+\)",
        ),
        (
            "",
            {"PODCRON_LOG_LEVEL": "verbose"},
            r"^PODCRON_LOG_LEVEL: logLevel must be one of DEBUG",
        ),
        ("logLevel: loud\n", {}, r"config\.yaml: logLevel must be one of DEBUG, INFO"),
        (
            "",
            {"PODCRON_METRICS_PORT": "70000"},
            r"^PODCRON_METRICS_PORT: metricsPort must be a port",
        ),
        ("sidecarPort: -1\n", {}, r"config\.yaml: sidecarPort must be a port"),
        (
            "",
            {"PODCRON_WORKER_THREADS": "many"},
            r"^PODCRON_WORKER_THREADS: workerThreads must be a whole number, got 'many'$",
        ),
    ],
    ids=[
        "malformed-yaml",
        "bad-level-env",
        "bad-level-file",
        "port-out-of-range",
        "negative-port",
        "not-a-number",
    ],
)
def test_errors_name_where_the_setting_came_from(
    tmp_path: Path, content: str, environ: dict[str, str], message: str
) -> None:
    (tmp_path / "config.yaml").write_text(content)
    with pytest.raises(ValueError, match=message) as raised:
        load({"PODCRON_CONFIG_DIR": str(tmp_path)} | environ)
    assert "\n" not in str(raised.value)


def test_log_levels_are_accepted_in_any_case(tmp_path: Path) -> None:
    settings = load({"PODCRON_CONFIG_DIR": str(tmp_path), "PODCRON_LOG_LEVEL": "debug"})
    assert settings.log_level == "DEBUG"


def test_an_environment_without_its_file_is_warned_about(tmp_path: Path) -> None:
    warnings: list[str] = []
    load({"PODCRON_CONFIG_DIR": str(tmp_path), "PODCRON_ENV": "prod"}, warn=warnings.append)
    (warning,) = warnings
    assert "PODCRON_ENV is 'prod'" in warning
    assert str(tmp_path / "config.prod.yaml") in warning
    warnings.clear()
    (tmp_path / "config.prod.yaml").write_text("workerThreads: 2\n")
    load({"PODCRON_CONFIG_DIR": str(tmp_path), "PODCRON_ENV": "prod"}, warn=warnings.append)
    assert warnings == []


def test_job_config_directories(tmp_path: Path) -> None:
    assert (Settings().job_config_dir, Settings().job_secrets_dir) == ("", "")
    (tmp_path / "config.yaml").write_text("jobConfigDir: /etc/podcron-jobs/config\n")
    settings = load(
        {
            "PODCRON_CONFIG_DIR": str(tmp_path),
            "PODCRON_JOB_SECRETS_DIR": "/etc/podcron-jobs/secrets",
        }
    )
    assert settings.job_config_dir == "/etc/podcron-jobs/config"
    assert settings.job_secrets_dir == "/etc/podcron-jobs/secrets"
