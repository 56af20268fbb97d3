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


def test_ha_is_off_by_default_and_the_leases_live_in_the_pods_namespace(tmp_path: Path) -> None:
    defaults = Settings()
    assert defaults.ha_ring == ""
    assert (defaults.lease_renew_seconds, defaults.fire_bound_seconds) == (1.0, 2.0)
    assert defaults.lease_stale_seconds == 6.0
    environ = {"PODCRON_CONFIG_DIR": str(tmp_path), "POD_NAMESPACE": "podcron-system"}
    assert load(environ).lease_namespace == "podcron-system"
    chosen = load(environ | {"PODCRON_HA_RING": "podcron", "PODCRON_LEASE_NAMESPACE": "leases"})
    assert (chosen.ha_ring, chosen.lease_namespace) == ("podcron", "leases")


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"PODCRON_HA_RING": "Podcron_1"},
            r"^PODCRON_HA_RING: haRing must be a DNS label .*, got 'Podcron_1'$",
        ),
        (
            {"PODCRON_HA_RING": "podcron"},
            r"^PODCRON_HA_RING: leaseNamespace must be set with haRing \(or POD_NAMESPACE\)$",
        ),
        (
            {"PODCRON_LEASE_RENEW_SECONDS": "0"},
            r"^PODCRON_LEASE_RENEW_SECONDS: leaseRenewSeconds must be positive, got 0.0$",
        ),
        (
            {"PODCRON_FIRE_BOUND_SECONDS": "1"},
            r"^PODCRON_FIRE_BOUND_SECONDS: fireBoundSeconds \(1.0\) must be greater than "
            r"leaseRenewSeconds \(1.0\)$",
        ),
        (
            {"PODCRON_LEASE_STALE_SECONDS": "2"},
            r"^PODCRON_LEASE_STALE_SECONDS: leaseStaleSeconds \(2.0\) must be greater than "
            r"fireBoundSeconds \(2.0\)$",
        ),
    ],
    ids=["ring-not-a-label", "no-namespace", "renew-zero", "bound-not-above-renew", "stale-low"],
)
def test_ha_timings_that_cannot_work_are_one_line(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load({"PODCRON_CONFIG_DIR": "/nonexistent"} | environ)
