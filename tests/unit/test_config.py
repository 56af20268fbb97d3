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
    ],
    ids=["unknown-key", "bad-log-format", "not-a-number", "not-a-list"],
)
def test_bad_settings_are_named(
    tmp_path: Path, content: str, environ: dict[str, str], message: str
) -> None:
    (tmp_path / "config.yaml").write_text(content)
    with pytest.raises(ValueError, match=message):
        load({"PODCRON_CONFIG_DIR": str(tmp_path)} | environ)


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
