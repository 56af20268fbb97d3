"""``ctx.config``: job configuration and secrets from mounted ConfigMap and Secret directories.

The chart mounts a ConfigMap (value ``jobConfig``) and an existing Secret
(value ``jobSecrets.existingSecret``) read-only into the operator container;
the settings ``jobConfigDir`` and ``jobSecretsDir`` say where. Each file is
a key and its content the value. Both directories are merged into one
read-only mapping; a key in both is the Secret's, as with ``envFrom``, where
the later source wins.

The kubelet writes such a volume as a timestamped directory, points the
symlink ``..data`` at it and swaps that symlink atomically on a change, so
reading ``..data``'s target is one syscall that tells whether anything
changed, and reading from the target directory sees one version whole. A
directory without ``..data`` (a developer's own) is compared by each file's
name, size, inode and modification time instead.

Nothing here puts a value anywhere: the module logs key names and paths,
never contents; Secret values are :class:`Secret` objects whose ``str``,
``repr`` and ``format`` print ``********``, which refuse to be pickled, and
which JSON encoders and OpenTelemetry attributes reject as values.
:meth:`ConfigSource.redact` takes the current Secret values out of a text,
for error messages that reach status, Events, spans or logs.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from podcron.errors import ConfigKeyError, JobConfigError

log = logging.getLogger("podcron.jobconfig")

#: What a Secret value prints as, and what :meth:`ConfigSource.redact` puts in its place.
REDACTED = "********"
#: A ConfigMap or Secret holds at most 1 MiB; a bigger file is no key of either.
MAX_VALUE_BYTES = 1 << 20
#: Shorter Secret values are not redacted from texts: "1" or "yes" would mangle every message.
MIN_REDACTED_LENGTH = 4
# The kubelet's symlink to the current version of an atomically written volume.
_DATA_LINK = "..data"
# A version swapped away while being read is read again, up to this many times; past
# that, the values read before are kept.
_READ_ATTEMPTS = 10


class Secret:
    """A value from the Secret: prints as ``********`` until :meth:`reveal` is called.

    Reveal it where it is used (``headers={"Authorization": f"Bearer
    {token.reveal()}"}``), not into a variable that outlives the call.
    """

    __slots__ = ("_value",)

    def __init__(self, value: bytes) -> None:
        self._value = value

    def reveal(self) -> str:
        """The value as text (UTF-8); :meth:`reveal_bytes` for binary values."""
        try:
            return self._value.decode()
        except UnicodeDecodeError:
            # The error's own text would quote the value's bytes.
            raise ValueError("this Secret value is not UTF-8 text: use reveal_bytes()") from None

    def reveal_bytes(self) -> bytes:
        """The value as the file holds it."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret({REDACTED!r})"

    def __str__(self) -> str:
        return REDACTED

    def __format__(self, spec: str) -> str:
        return format(REDACTED, spec)

    def __reduce__(self) -> NoReturn:
        raise TypeError("a Secret is not pickled: reveal() it where it is used")

    def __copy__(self) -> Secret:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Secret:
        return self


@dataclass(frozen=True, slots=True)
class _Values:
    """One version of the merged directories."""

    text: Mapping[str, str] = field(default_factory=dict)
    secrets: Mapping[str, Secret] = field(default_factory=dict)
    # The Secret values as texts, longest first, for redaction.
    redactable: tuple[str, ...] = ()


class JobConfig(Mapping[str, "str | Secret"]):
    """``ctx.config``: the job configuration one run sees, read-only.

    ``config["key"]`` is a ``str`` for a ConfigMap key and a :class:`Secret`
    for a Secret key; :meth:`text` and :meth:`secret` also say which one the
    code expects. The values are read at the first access and then kept, so
    a run sees one version even if the kubelet swaps the files meanwhile.
    """

    __slots__ = ("_source", "_values")

    def __init__(self, source: ConfigSource) -> None:
        self._source = source
        self._values: _Values | None = None

    def _data(self) -> _Values:
        values = self._values
        if values is None:
            values = self._values = self._source._current()
        return values

    def __getitem__(self, key: str) -> str | Secret:
        values = self._data()
        text = values.text.get(key)
        if text is not None:
            return text
        secret = values.secrets.get(key)
        if secret is not None:
            return secret
        self._missing(key, values)

    def text(self, key: str) -> str:
        """A ConfigMap value; refuses a Secret key, so that revealing one stays explicit."""
        values = self._data()
        text = values.text.get(key)
        if text is not None:
            return text
        if key in values.secrets:
            raise ConfigKeyError(
                f"config key {key!r} comes from the Secret: use config.secret({key!r}).reveal()"
            )
        self._missing(key, values)

    def secret(self, key: str) -> Secret:
        """A Secret value; refuses a ConfigMap key, which anyone who can read the ConfigMap sees."""
        values = self._data()
        secret = values.secrets.get(key)
        if secret is not None:
            return secret
        if key in values.text:
            raise ConfigKeyError(
                f"config key {key!r} comes from the ConfigMap (jobConfig), not the Secret: "
                "move it to the Secret, or read it with config.text()"
            )
        self._missing(key, values)

    def _missing(self, key: str, values: _Values) -> NoReturn:
        known = sorted({*values.text, *values.secrets})
        raise ConfigKeyError(
            f"no config key {key!r} in jobConfig or jobSecrets (keys: {', '.join(known) or 'none'})"
        )

    def __contains__(self, key: object) -> bool:
        values = self._data()
        return key in values.text or key in values.secrets

    def __iter__(self) -> Iterator[str]:
        values = self._data()
        return iter(sorted({*values.text, *values.secrets}))

    def __len__(self) -> int:
        values = self._data()
        return len(values.text.keys() | values.secrets.keys())

    def __repr__(self) -> str:
        # Keys only: a job that logs its ctx.config prints no value.
        values = self._data()
        return f"JobConfig(config={sorted(values.text)}, secrets={sorted(values.secrets)})"


class _Directory:
    """One mounted directory: its last version and the files it held."""

    def __init__(self, path: Path, *, secret: bool) -> None:
        self.path = path
        self.secret = secret
        self.kind = "jobSecretsDir" if secret else "jobConfigDir"
        # A str made once: joining Paths costs more than the readlink each run makes.
        self.link = str(path / _DATA_LINK)
        self.stamp: object = None
        self.files: dict[str, bytes] = {}
        self.error: str | None = None

    def _version(self) -> tuple[str | None, object]:
        """The kubelet's current version directory (or None), and what changes with the files."""
        try:
            target = os.readlink(self.link)
        except OSError as error:
            # ENOENT: no ..data (or no directory: scandir says which); EINVAL: not a symlink.
            if error.errno not in (errno.ENOENT, errno.EINVAL):
                raise
        else:
            return target, target
        stamp = []
        with os.scandir(self.path) as entries:
            for entry in entries:
                if not entry.name.startswith(".."):
                    stat = entry.stat()
                    stamp.append((entry.name, stat.st_ino, stat.st_size, stat.st_mtime_ns))
        return None, sorted(stamp)

    def read(self) -> bool:
        """Read the files again if they changed; True when they did. Raises OSError."""
        for _ in range(_READ_ATTEMPTS):
            target, stamp = self._version()
            if stamp == self.stamp:
                return False
            try:
                # The kubelet's top-level names are symlinks into ..data, made after the
                # swap: reading the version's own directory sees exactly one version.
                files = self._read_files(self.path if target is None else self.path / target)
            except FileNotFoundError:
                continue  # the kubelet removed the version being read: read the new one
            # The kubelet deletes a version, file by file, only after swapping ..data
            # away from it: if ..data still points at it, it was whole while read.
            if target is None or os.readlink(self.link) == target:
                self.stamp, self.files = stamp, files
                return True
        raise OSError(f"it changed {_READ_ATTEMPTS} times while being read")

    def _read_files(self, directory: Path) -> dict[str, bytes]:
        files: dict[str, bytes] = {}
        with os.scandir(directory) as entries:
            for entry in entries:
                # Names starting with ".." are the kubelet's, and never valid keys.
                if entry.name.startswith("..") or not entry.is_file():
                    continue
                with open(entry.path, "rb") as file:
                    content = file.read(MAX_VALUE_BYTES + 1)
                if len(content) > MAX_VALUE_BYTES:
                    log.warning(
                        "%s %s: %s is larger than %d bytes: not a key",
                        self.kind,
                        self.path,
                        entry.name,
                        MAX_VALUE_BYTES,
                    )
                    continue
                files[entry.name] = content
        return files


class ConfigSource:
    """The job configuration of the whole operator, following the mounted files.

    ``config_dir`` holds the ConfigMap's keys, ``secrets_dir`` the Secret's;
    either may be None (not configured). :meth:`load` reads them once at
    start-up and raises :class:`JobConfigError` for a directory that cannot
    be read; after that a directory that becomes unreadable keeps its last
    values, with one warning. Every method may be called from any thread.
    """

    def __init__(
        self, config_dir: str | Path | None = None, secrets_dir: str | Path | None = None
    ) -> None:
        self._directories = [
            _Directory(Path(path), secret=secret)
            for path, secret in ((config_dir, False), (secrets_dir, True))
            if path
        ]
        self._lock = threading.Lock()
        self._values = _Values()

    def load(self) -> None:
        """Read every directory; raises :class:`JobConfigError` naming one that fails."""
        with self._lock:
            for directory in self._directories:
                try:
                    directory.read()
                except OSError as error:
                    raise JobConfigError(
                        f"{directory.kind} {directory.path}: cannot read it "
                        f"({error.strerror or error})"
                    ) from None
            self._values = self._merge()
        for directory in self._directories:
            log.info(
                "job configuration: %d keys from %s %s",
                len(directory.files),
                directory.kind,
                directory.path,
            )

    def snapshot(self) -> JobConfig:
        """``ctx.config``: a :class:`JobConfig` that reads the values at its first access."""
        return JobConfig(self)

    def _current(self) -> _Values:
        """The values now, re-read if a directory changed since the last call."""
        with self._lock:
            changed = False
            for directory in self._directories:
                try:
                    changed |= directory.read()
                except OSError as error:
                    problem = (
                        f"{directory.kind} {directory.path}: cannot read it "
                        f"({error.strerror or error}); keeping the keys read before"
                    )
                    if directory.error != problem:
                        directory.error = problem
                        log.warning("%s", problem)
                else:
                    if directory.error is not None:
                        directory.error = None
                        log.info("%s %s is readable again", directory.kind, directory.path)
            if changed:
                self._values = self._merge()
            return self._values

    def redact(self, text: str) -> str:
        """``text`` with every current Secret value of 4 characters or more as ``********``."""
        return _redact(text, self._current().redactable)

    def redact_known(self, text: str) -> str:
        """:meth:`redact` with the values last read, without looking at the files again.

        For log lines: one is written far more often than the files change, and a
        value no run or factory has read since a change was handed to nobody.
        """
        return _redact(text, self._values.redactable)

    def _merge(self) -> _Values:
        text: dict[str, str] = {}
        secrets: dict[str, Secret] = {}
        redactable: set[str] = set()
        for directory in self._directories:
            for key, content in directory.files.items():
                if directory.secret:
                    secrets[key] = Secret(content)
                    decoded = content.decode(errors="ignore")
                    redactable |= {
                        value
                        for value in (decoded, decoded.strip())
                        if len(value) >= MIN_REDACTED_LENGTH
                    }
                    continue
                try:
                    text[key] = content.decode()
                except UnicodeDecodeError:
                    log.warning(
                        "%s %s: %s is not UTF-8 text: not a key (put binary values in the Secret)",
                        directory.kind,
                        directory.path,
                        key,
                    )
        both = sorted(text.keys() & secrets.keys())
        if both:
            log.warning("config keys in both jobConfig and jobSecrets, the Secret's used: %s", both)
            for key in both:
                del text[key]
        return _Values(
            text=text,
            secrets=secrets,
            redactable=tuple(sorted(redactable, key=len, reverse=True)),
        )


def _redact(text: str, values: tuple[str, ...]) -> str:
    for value in values:
        if value in text:
            text = text.replace(value, REDACTED)
    return text


#: ``ctx.config`` of a run in an operator without job configuration: no keys.
NO_CONFIG = ConfigSource().snapshot()
