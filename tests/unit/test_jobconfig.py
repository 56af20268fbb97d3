"""``ctx.config``: mounted ConfigMap and Secret directories, reloaded, never printing a secret.

Real files in the kubelet's layout (``..data`` swapped atomically), and plain directories.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import pickle
import threading
from pathlib import Path

import pytest

from podcron.errors import ConfigKeyError, JobConfigError
from podcron.jobconfig import (
    MAX_VALUE_BYTES,
    REDACTED,
    ConfigSource,
    Secret,
)

from .kubelet_volume import KubeletVolume

TOKEN = "tok-3f9a1c77e2b54d0a"


@pytest.fixture
def volumes(tmp_path: Path) -> tuple[KubeletVolume, KubeletVolume]:
    config = KubeletVolume(tmp_path / "config")
    config.write({"uptimeUrl": "http://reports.shop.svc/health", "retries": "3"})
    secrets = KubeletVolume(tmp_path / "secrets")
    secrets.write({"uptimeToken": TOKEN + "\n", "tls.key": b"\x00\xff binary"})
    return config, secrets


@pytest.fixture
def source(volumes: tuple[KubeletVolume, KubeletVolume]) -> ConfigSource:
    config, secrets = volumes
    loaded = ConfigSource(config_dir=config.path, secrets_dir=secrets.path)
    loaded.load()
    return loaded


def test_both_directories_merge_into_one_mapping(source: ConfigSource) -> None:
    config = source.snapshot()
    assert sorted(config) == ["retries", "tls.key", "uptimeToken", "uptimeUrl"]
    assert len(config) == 4
    assert config["uptimeUrl"] == "http://reports.shop.svc/health"
    assert config.text("retries") == "3"
    token = config["uptimeToken"]
    assert isinstance(token, Secret)
    assert token.reveal() == TOKEN + "\n"
    assert config.secret("tls.key").reveal_bytes() == b"\x00\xff binary"
    assert "..data" not in config
    assert "uptimeToken" in config


def test_the_next_snapshot_sees_a_swap_and_a_taken_one_keeps_its_version(
    volumes: tuple[KubeletVolume, KubeletVolume], source: ConfigSource
) -> None:
    config_volume, _ = volumes
    during_run = source.snapshot()
    assert during_run.text("retries") == "3"
    config_volume.write({"uptimeUrl": "http://reports.shop.svc/ready", "timeout": "5"})
    # The run that had already read keeps one consistent version...
    assert during_run.text("uptimeUrl") == "http://reports.shop.svc/health"
    assert "retries" in during_run
    # ...and the next run sees the new files, removed and added keys included.
    next_run = source.snapshot()
    assert next_run.text("uptimeUrl") == "http://reports.shop.svc/ready"
    assert next_run.text("timeout") == "5"
    assert "retries" not in next_run


def test_a_plain_directory_is_followed_by_its_files(tmp_path: Path) -> None:
    (tmp_path / "greeting").write_text("hello")
    source = ConfigSource(config_dir=tmp_path)
    source.load()
    assert source.snapshot()["greeting"] == "hello"
    (tmp_path / "greeting").write_text("good morning")  # size and mtime change
    assert source.snapshot()["greeting"] == "good morning"
    (tmp_path / "added").write_text("1")
    assert source.snapshot().text("added") == "1"


def test_a_version_removed_while_being_read_is_read_again(
    volumes: tuple[KubeletVolume, KubeletVolume],
    source: ConfigSource,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config_volume, _ = volumes
    config_volume.write({"uptimeUrl": "http://v2"})
    real_readlink = os.readlink
    swapped: list[str] = []

    def readlink_then_swap(path: str | os.PathLike[str]) -> str:
        target = real_readlink(path)
        if not swapped and Path(path).parent == config_volume.path:
            # The kubelet swaps and deletes the version just found, before it is read.
            swapped.append(target)
            config_volume.write({"uptimeUrl": "http://v3"})
        return target

    monkeypatch.setattr(os, "readlink", readlink_then_swap)
    assert source.snapshot().text("uptimeUrl") == "http://v3"
    assert swapped


def test_a_version_half_deleted_while_being_read_is_not_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    volume = KubeletVolume(tmp_path)
    volume.write({"user": "app", "password": "v1"})
    source = ConfigSource(config_dir=tmp_path)
    source.load()
    volume.write({"user": "app", "password": "v2"}, keep_old_version=True)
    real_readlink = os.readlink
    calls: list[str] = []

    def readlink_then_delete(path: str | os.PathLike[str]) -> str:
        target = real_readlink(path)
        calls.append(target)
        if len(calls) == 1:
            # Swapped away and half deleted by the kubelet before it is read.
            volume.write({"user": "app", "password": "v3"}, keep_old_version=True)
            (tmp_path / target / "password").unlink()
        return target

    monkeypatch.setattr(os, "readlink", readlink_then_delete)
    config = source.snapshot()
    assert dict(config) == {"user": "app", "password": "v3"}
    assert len(set(calls)) == 2


def test_threads_each_see_one_whole_version(tmp_path: Path) -> None:
    volume = KubeletVolume(tmp_path)
    volume.write({"a": "0", "b": "0"})
    source = ConfigSource(config_dir=tmp_path)
    source.load()
    mixed: list[tuple[str, str]] = []
    errors: list[Exception] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            config = source.snapshot()
            try:
                pair = (config.text("a"), config.text("b"))
            except Exception as error:
                errors.append(error)
                return
            if pair[0] != pair[1]:
                mixed.append(pair)

    readers = [threading.Thread(target=read) for _ in range(4)]
    for reader in readers:
        reader.start()
    try:
        for version in range(1, 200):
            volume.write({"a": str(version), "b": str(version)})
    finally:
        stop.set()
        for reader in readers:
            reader.join()
    assert errors == []
    assert mixed == []
    assert source.snapshot().text("a") == "199"


# -- a Secret never prints -----------------------------------------------------------


def test_a_secret_prints_as_stars_everywhere(
    source: ConfigSource, caplog: pytest.LogCaptureFixture
) -> None:
    token = source.snapshot().secret("uptimeToken")
    assert str(token) == REDACTED
    assert repr(token) == "Secret('********')"
    assert f"{token}" == REDACTED
    assert f"{token:>10}" == "  ********"
    assert "%s %r" % (token, token) == "******** Secret('********')"  # noqa: UP031
    assert "{}".format(token) == REDACTED  # noqa: UP032
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("podcron.job").info("token %s %r", token, token)
        logging.getLogger("podcron.job").info("config %s", source.snapshot())
    assert TOKEN not in caplog.text
    assert "uptimeToken" in caplog.text, "keys may show, values not"
    with pytest.raises(TypeError):
        json.dumps({"token": token})
    with pytest.raises(TypeError, match="not pickled"):
        pickle.dumps(token)
    assert copy.copy(token) is token
    assert copy.deepcopy({"t": token})["t"] is token


def test_a_binary_secret_refuses_text_without_quoting_its_bytes(source: ConfigSource) -> None:
    with pytest.raises(ValueError, match="use reveal_bytes") as error:
        source.snapshot().secret("tls.key").reveal()
    assert error.value.__suppress_context__
    assert "0xff" not in str(error.value)


def test_config_repr_shows_keys_only(source: ConfigSource) -> None:
    assert repr(source.snapshot()) == (
        "JobConfig(config=['retries', 'uptimeUrl'], secrets=['tls.key', 'uptimeToken'])"
    )


def test_redact_takes_every_secret_value_out_of_a_text(source: ConfigSource) -> None:
    text = f"GET /health failed: 401 for token {TOKEN} (header 'Bearer {TOKEN}\n')"
    redacted = source.redact(text)
    assert TOKEN not in redacted
    assert redacted == "GET /health failed: 401 for token ******** (header 'Bearer ********')"


def test_short_secret_values_are_not_redacted(tmp_path: Path) -> None:
    (tmp_path / "flag").write_text("on")
    source = ConfigSource(secrets_dir=tmp_path)
    source.load()
    assert source.redact("turned on") == "turned on"


# -- what the job gets wrong ---------------------------------------------------------


def test_text_and_secret_refuse_the_other_kind_and_name_the_fix(source: ConfigSource) -> None:
    config = source.snapshot()
    with pytest.raises(ConfigKeyError) as as_text:
        config.text("uptimeToken")
    assert str(as_text.value) == (
        "config key 'uptimeToken' comes from the Secret: use config.secret('uptimeToken').reveal()"
    )
    with pytest.raises(ConfigKeyError) as as_secret:
        config.secret("retries")
    assert "comes from the ConfigMap (jobConfig), not the Secret" in str(as_secret.value)


def test_a_missing_key_names_the_keys_there_are(source: ConfigSource) -> None:
    with pytest.raises(KeyError) as missing:
        source.snapshot()["uptimeURL"]
    assert str(missing.value) == (
        "no config key 'uptimeURL' in jobConfig or jobSecrets "
        "(keys: retries, tls.key, uptimeToken, uptimeUrl)"
    )
    assert source.snapshot().get("uptimeURL") is None
    assert ConfigSource().snapshot().get("anything") is None


def test_a_key_in_both_is_the_secrets_with_a_warning_naming_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    KubeletVolume(tmp_path / "config").write({"password": "from-the-configmap"})
    KubeletVolume(tmp_path / "secrets").write({"password": "from-the-secret"})
    source = ConfigSource(config_dir=tmp_path / "config", secrets_dir=tmp_path / "secrets")
    with caplog.at_level(logging.DEBUG, logger="podcron.jobconfig"):
        source.load()
    assert source.snapshot().secret("password").reveal() == "from-the-secret"
    assert "config keys in both jobConfig and jobSecrets, the Secret's used: ['password']" in (
        caplog.text
    )
    assert "from-the" not in caplog.text


def test_files_that_are_no_keys_are_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    KubeletVolume(tmp_path).write(
        {"ok": "1", "big": b"x" * (MAX_VALUE_BYTES + 1), "binary": b"\xff\xfe"}
    )
    source = ConfigSource(config_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="podcron.jobconfig"):
        source.load()
    assert list(source.snapshot()) == ["ok"]
    assert f"big is larger than {MAX_VALUE_BYTES} bytes: not a key" in caplog.text
    assert "binary is not UTF-8 text: not a key (put binary values in the Secret)" in caplog.text


def test_an_unreadable_directory_at_start_is_one_line_naming_it(tmp_path: Path) -> None:
    source = ConfigSource(secrets_dir=tmp_path / "missing")
    with pytest.raises(JobConfigError) as error:
        source.load()
    assert str(error.value) == (
        f"jobSecretsDir {tmp_path / 'missing'}: cannot read it (No such file or directory)"
    )


def test_a_directory_gone_later_keeps_its_keys_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "config"
    KubeletVolume(directory).write({"greeting": "hello"})
    source = ConfigSource(config_dir=directory)
    source.load()
    hidden = tmp_path / "hidden"
    directory.rename(hidden)
    with caplog.at_level(logging.INFO, logger="podcron.jobconfig"):
        assert source.snapshot()["greeting"] == "hello"
        assert source.snapshot()["greeting"] == "hello"
        hidden.rename(directory)
        assert source.snapshot()["greeting"] == "hello"
    messages = [record.getMessage() for record in caplog.records]
    assert messages == [
        f"jobConfigDir {directory}: cannot read it (No such file or directory); "
        "keeping the keys read before",
        f"jobConfigDir {directory} is readable again",
    ]


def test_nothing_this_module_logs_carries_a_value(
    volumes: tuple[KubeletVolume, KubeletVolume], caplog: pytest.LogCaptureFixture
) -> None:
    config, secrets = volumes
    with caplog.at_level(logging.DEBUG):
        source = ConfigSource(config_dir=config.path, secrets_dir=secrets.path)
        source.load()
        secrets.write({"uptimeToken": TOKEN, "uptimeUrl": "http://in-both"})
        source.snapshot().get("uptimeToken")
    assert caplog.records, "it does log: keys and paths"
    for record in caplog.records:
        assert TOKEN not in record.getMessage()
        assert "http://in-both" not in record.getMessage()
