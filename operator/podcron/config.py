"""Settings for the operator and the sidecar, and where they come from.

Highest first: environment variables (``PODCRON_`` + the setting's name in
upper snake case, lists comma-separated), ``config.<env>.yaml`` (``<env>``
from ``PODCRON_ENV``), ``config.yaml``, then the defaults below. Both files
are read from ``PODCRON_CONFIG_DIR`` (default: the working directory) and
use the camelCase names, e.g. ``allowedModules: ["myjobs.*"]``.

A setting that cannot be used raises :class:`ValueError` with a one-line
message naming the file or variable it came from, the setting, and what it
must be; ``podcron`` prints it and exits with code 2.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
#: Each past run holds up to a few hundred bytes: 1,000 per job at 10,000 jobs is about 2 GB.
MAX_RUN_HISTORY_LIMIT = 1000
_TYPE_NAMES = {int: "a whole number", float: "a number", str: "a string"}
# The ring's name is a label value (podcron.dev/ring) and part of Lease names: a DNS label.
_RING_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


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
    #: Scheduled and catch-up runs active at once over all jobs; further runs wait for a slot.
    max_concurrent_runs: int = 100
    #: Manual runs active at once over all jobs, beside ``max_concurrent_runs``; more get 429.
    max_manual_runs: int = 10
    #: Runs of one plain ``def`` job active at once under Allow; further ticks are skipped.
    threads_per_job: int = 2
    #: Outcomes each job keeps for ``/_sys/job/{namespace}/{name}/runs``; 0: none.
    run_history_limit: int = 20
    #: Namespaces to watch; empty: all namespaces.
    namespaces: tuple[str, ...] = ()
    #: Status patches per second over all jobs (each job is also held to about one per second).
    #: 20, as kube-controller-manager's own API rate: at 100, 1,000 one-second jobs spent half
    #: the operator's CPU and most of the API server's on status (docs/performance.md).
    status_patches_per_second: float = 20.0
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
    #: The replicas' ring (docs/ha.md), the chart's release fullname; empty: one replica, no Leases.
    ha_ring: str = ""
    #: Where the ring's Leases live; empty: the pod's namespace (``POD_NAMESPACE``).
    lease_namespace: str = ""
    #: R: how often a replica renews its member Lease.
    lease_renew_seconds: float = 1.0
    #: Λ: how far ahead of its clock a renewal lets a replica start ticks.
    fire_bound_seconds: float = 2.0
    #: L: a member Lease unchanged this long is fenced by the coordinator.
    lease_stale_seconds: float = 6.0

    def __post_init__(self) -> None:
        if self.log_format not in ("json", "text"):
            raise ValueError(f"logFormat must be 'json' or 'text', got {self.log_format!r}")
        if self.log_level.upper() not in LOG_LEVELS:
            raise ValueError(
                f"logLevel must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}"
            )
        # Frozen: the one way to store the spelling logging accepts.
        object.__setattr__(self, "log_level", self.log_level.upper())
        for setting, port in (
            ("metricsPort", self.metrics_port),
            ("sidecarPort", self.sidecar_port),
        ):
            if not 0 <= port <= 65535:
                raise ValueError(
                    f"{setting} must be a port from 1 to 65535 (0: any free one), got {port}"
                )
        if self.shutdown_timeout_seconds < 0:
            raise ValueError("shutdownTimeoutSeconds must not be negative")
        if self.worker_threads < 1 or self.max_concurrent_runs < 1:
            raise ValueError("workerThreads and maxConcurrentRuns must be at least 1")
        if self.status_patches_per_second <= 0:
            raise ValueError("statusPatchesPerSecond must be positive")
        if self.max_manual_runs < 1 or self.threads_per_job < 1:
            raise ValueError("maxManualRuns and threadsPerJob must be at least 1")
        if not 0 <= self.run_history_limit <= MAX_RUN_HISTORY_LIMIT:
            raise ValueError(
                f"runHistoryLimit must be from 0 (off) to {MAX_RUN_HISTORY_LIMIT},"
                f" got {self.run_history_limit}"
            )
        self._check_ha()

    def _check_ha(self) -> None:
        if self.ha_ring and not _RING_NAME.fullmatch(self.ha_ring):
            raise ValueError(
                "haRing must be a DNS label (lower-case letters, digits and '-', at most 63), "
                f"got {self.ha_ring!r}"
            )
        if self.ha_ring and not self.lease_namespace:
            raise ValueError("leaseNamespace must be set with haRing (or POD_NAMESPACE)")
        if not self.lease_renew_seconds > 0:
            raise ValueError(f"leaseRenewSeconds must be positive, got {self.lease_renew_seconds}")
        # A renewal every R must land before the bound of the one before runs out. Fencing
        # sooner than the bound gains nothing (the successor starts only ticks above the
        # fenced replica's bound) and would fence replicas that are merely slow.
        if not self.fire_bound_seconds > self.lease_renew_seconds:
            raise ValueError(
                f"fireBoundSeconds ({self.fire_bound_seconds}) must be greater than "
                f"leaseRenewSeconds ({self.lease_renew_seconds})"
            )
        if not self.lease_stale_seconds > self.fire_bound_seconds:
            raise ValueError(
                f"leaseStaleSeconds ({self.lease_stale_seconds}) must be greater than "
                f"fireBoundSeconds ({self.fire_bound_seconds})"
            )


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join("CIDRs" if part == "cidrs" else part.title() for part in rest)


_DEFAULTS = Settings()
_CAMEL_TO_FIELD = {_camel(f.name): f.name for f in fields(Settings)}


def _convert(name: str, value: Any, source: str) -> Any:
    default = getattr(_DEFAULTS, name)
    if isinstance(default, tuple):
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        if isinstance(value, list):
            return tuple(str(part) for part in value)
        raise ValueError(f"{source}: {_camel(name)} must be a list, got {value!r}")
    kind = type(default)
    try:
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"{source}: {_camel(name)} must be {_TYPE_NAMES.get(kind, kind.__name__)}, "
            f"got {value!r}"
        ) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except OSError as error:
        raise ValueError(f"{path}: cannot be read ({error.strerror})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or type(error).__name__
        raise ValueError(
            f"{path}: not valid YAML ({problem}{where}); it must be a mapping such as "
            "'logLevel: INFO'"
        ) from None
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a mapping of settings such as 'logLevel: INFO'")
    unknown = set(loaded) - set(_CAMEL_TO_FIELD)
    if unknown:
        raise ValueError(f"{path}: unknown settings {sorted(unknown)}")
    return {_CAMEL_TO_FIELD[key]: value for key, value in loaded.items()}


def load(
    environ: Mapping[str, str] | None = None, *, warn: Callable[[str], None] | None = None
) -> Settings:
    """Read the settings from files and the environment (``os.environ`` by default).

    ``warn`` is told of what is likely a mistake but not an error: a
    ``PODCRON_ENV`` without its file.
    """
    env = os.environ if environ is None else environ
    directory = Path(env.get("PODCRON_CONFIG_DIR", "."))
    files = [directory / "config.yaml"]
    if env.get("PODCRON_ENV"):
        files.append(directory / f"config.{env['PODCRON_ENV']}.yaml")
        if not files[-1].is_file() and warn is not None:
            warn(
                f"PODCRON_ENV is {env['PODCRON_ENV']!r} but {files[-1]} does not exist: "
                "only config.yaml and PODCRON_* variables apply"
            )
    # Each setting's value and where it came from, the last one winning.
    values: dict[str, tuple[Any, str]] = {}
    for path in files:
        values |= {name: (value, str(path)) for name, value in _read_yaml(path).items()}
    for f in fields(Settings):
        variable = "PODCRON_" + f.name.upper()
        if variable in env:
            values[f.name] = (env[variable], variable)
    converted = {name: _convert(name, value, source) for name, (value, source) in values.items()}
    if not converted.get("lease_namespace"):
        converted["lease_namespace"] = env.get("POD_NAMESPACE", "")
    try:
        return dataclasses.replace(_DEFAULTS, **converted)
    except ValueError as error:
        # The checks name the setting; say where it was set, if not by default.
        sources = [source for name, (_, source) in values.items() if _camel(name) in str(error)]
        raise ValueError(f"{sources[0]}: {error}" if sources else str(error)) from None
