"""Settings for the operator and the sidecar, and where they come from.

Highest first: environment variables (``PODCRON_`` + the setting's name in
upper snake case, lists comma-separated), ``config.<env>.yaml`` (``<env>``
from ``PODCRON_ENV``), ``config.yaml``, then the defaults below. Both files
are read from ``PODCRON_CONFIG_DIR`` (default: the working directory) and
use the camelCase names, e.g. ``allowedModules: ["myjobs.*"]``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Every setting, with its default."""

    #: ``fnmatch`` patterns of modules whose ``module:function`` may run; empty: none may.
    allowed_modules: tuple[str, ...] = ()
    #: Networks allowed to call ``/_sys/job``; empty: pod CIDRs from Nodes, plus loopback.
    allowed_cidrs: tuple[str, ...] = ()
    #: Peers whose ``X-Forwarded-For`` is believed; empty: the header is ignored.
    trusted_proxies: tuple[str, ...] = ()
    #: How long SIGTERM waits for running jobs; under the pod's 30 s grace period.
    shutdown_timeout_seconds: float = 25.0
    #: Threads that run plain ``def`` jobs.
    worker_threads: int = 8
    #: Runs active at once over all jobs; further runs wait for a slot.
    max_concurrent_runs: int = 100
    #: Namespaces to watch; empty: all namespaces.
    namespaces: tuple[str, ...] = ()
    #: Status patches per second over all jobs (each job is also held to about one per second).
    status_patches_per_second: float = 100.0
    #: The Unix socket between operator and sidecar (an emptyDir in the pod).
    control_socket: str = "/var/run/podcron/control.sock"
    #: Address and port of the operator's ``/metrics`` and health endpoints.
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 9090
    #: Address and port the sidecar listens on.
    sidecar_host: str = "0.0.0.0"
    sidecar_port: int = 8080
    #: The sidecar's port for the kubelet's probes, open to every address (the API port is not).
    sidecar_probe_port: int = 8081
    #: How often the sidecar re-reads pod CIDRs from Nodes.
    cidr_refresh_seconds: float = 60.0
    #: Discovered pod CIDRs wider than these prefixes are ignored (a Node claiming 0.0.0.0/0).
    pod_cidrs_min_prefix_v4: int = 8
    pod_cidrs_min_prefix_v6: int = 32
    #: ``json`` (one object per line) or ``text`` (for people at a terminal).
    log_format: str = "json"
    #: ``DEBUG``, ``INFO``, ``WARNING`` or ``ERROR``.
    log_level: str = "INFO"
    #: Where the job configuration's ConfigMap is mounted (``ctx.config``); empty: none.
    job_config_dir: str = ""
    #: Where the jobs' Secret is mounted (Secret values of ``ctx.config``); empty: none.
    job_secrets_dir: str = ""

    def __post_init__(self) -> None:
        if self.log_format not in ("json", "text"):
            raise ValueError(f"logFormat must be 'json' or 'text', got {self.log_format!r}")
        if self.shutdown_timeout_seconds < 0:
            raise ValueError("shutdownTimeoutSeconds must not be negative")
        if self.worker_threads < 1 or self.max_concurrent_runs < 1:
            raise ValueError("workerThreads and maxConcurrentRuns must be at least 1")
        if self.status_patches_per_second <= 0:
            raise ValueError("statusPatchesPerSecond must be positive")


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join("CIDRs" if part == "cidrs" else part.title() for part in rest)


_DEFAULTS = Settings()
_CAMEL_TO_FIELD = {_camel(f.name): f.name for f in fields(Settings)}


def _convert(name: str, value: Any) -> Any:
    default = getattr(_DEFAULTS, name)
    if isinstance(default, tuple):
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        if isinstance(value, list):
            return tuple(str(part) for part in value)
        raise ValueError(f"{_camel(name)} must be a list, got {value!r}")
    try:
        return type(default)(value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{_camel(name)}: {error}") from error


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    loaded = yaml.safe_load(path.read_text()) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a mapping of settings")
    unknown = set(loaded) - set(_CAMEL_TO_FIELD)
    if unknown:
        raise ValueError(f"{path}: unknown settings {sorted(unknown)}")
    return {_CAMEL_TO_FIELD[key]: value for key, value in loaded.items()}


def load(environ: Mapping[str, str] | None = None) -> Settings:
    """Read the settings from files and the environment (``os.environ`` by default)."""
    env = os.environ if environ is None else environ
    directory = Path(env.get("PODCRON_CONFIG_DIR", "."))
    values: dict[str, Any] = _read_yaml(directory / "config.yaml")
    if env.get("PODCRON_ENV"):
        values |= _read_yaml(directory / f"config.{env['PODCRON_ENV']}.yaml")
    for f in fields(Settings):
        variable = "PODCRON_" + f.name.upper()
        if variable in env:
            values[f.name] = env[variable]
    return dataclasses.replace(
        _DEFAULTS, **{name: _convert(name, value) for name, value in values.items()}
    )
