"""The few Kubernetes API calls the operator makes itself (kopf makes the rest).

The official client is synchronous, so callers run these in worker threads.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, cast

import kubernetes
import urllib3
from kubernetes.client.exceptions import ApiException

from podcron import kubeclient
from podcron.controller.resource import GROUP, KIND, PLURAL, VERSION
from podcron.errors import ApiConflict, ObjectGone, TransientApiError

COMPONENT = "podcron-operator"
# events.k8s.io/v1 refuses a note over 1 kB; the same bound on core/v1 messages.
MESSAGE_LIMIT = 1024
TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


def _call(function: Callable[..., Any], *args: object, **kwargs: object) -> Any:
    """Call the client, turning its errors into the two that callers act on."""
    try:
        return function(*args, **kwargs)
    except ApiException as error:
        if error.status == 404:
            raise ObjectGone(str(error.reason)) from error
        if error.status == 409:
            raise ApiConflict(f"{error.status} {error.reason}") from error
        if error.status in TRANSIENT_STATUSES:
            raise TransientApiError(f"{error.status} {error.reason}") from error
        raise
    except (OSError, urllib3.exceptions.HTTPError) as error:
        raise TransientApiError(f"{type(error).__name__}: {error}") from error


def _micro_time(moment: datetime) -> str:
    """An Event's timestamp (RFC 3339 UTC with microseconds)."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class KubeApi:
    """Status patches and Events through one connection pool."""

    def __init__(self, api_client: kubernetes.client.ApiClient) -> None:
        self._custom = kubernetes.client.CustomObjectsApi(api_client)
        self._core = kubernetes.client.CoreV1Api(api_client)
        self._instance = socket.gethostname()

    @classmethod
    def from_environment(cls, *, pool_size: int = 20) -> KubeApi:
        """In-cluster credentials in a pod, the current kubeconfig elsewhere.

        ``pool_size``: one connection per thread that calls (the status
        writer's and the event recorder's).
        """
        return cls(kubeclient.api_client(pool_size=pool_size))

    def patch_status(
        self,
        namespace: str,
        name: str,
        status: Mapping[str, Any],
        resource_version: str | None = None,
    ) -> str:
        """Merge-patch the status subresource; returns the object's new resourceVersion.

        With ``resource_version``, only if the object is still at that version:
        raises ApiConflict when it moved on. Raises ObjectGone or TransientApiError.
        """
        body: dict[str, Any] = {"status": dict(status)}
        if resource_version is not None:
            body["metadata"] = {"resourceVersion": resource_version}
        patched = _call(
            self._custom.patch_namespaced_custom_object_status,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            body,
        )
        return str(patched["metadata"]["resourceVersion"])

    def read_status(self, namespace: str, name: str) -> tuple[Mapping[str, Any], str]:
        """The object's status as the API server holds it now, and its resourceVersion."""
        found = _call(
            self._custom.get_namespaced_custom_object_status,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
        )
        return found.get("status") or {}, str(found["metadata"]["resourceVersion"])

    def list_job_keys(self, namespace: str | None = None) -> set[tuple[str, str]]:
        """(namespace, name) of every ScheduledJob, in ``namespace`` or in all of them."""
        keys: set[tuple[str, str]] = set()
        token: str | None = None
        while True:
            if namespace is None:
                found = self._custom.list_cluster_custom_object(
                    GROUP, VERSION, PLURAL, limit=500, _continue=token
                )
            else:
                found = self._custom.list_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, limit=500, _continue=token
                )
            page = cast(dict[str, Any], found)
            keys.update((i["metadata"]["namespace"], i["metadata"]["name"]) for i in page["items"])
            token = page["metadata"].get("continue")
            if not token:
                return keys

    def create_event(
        self,
        *,
        namespace: str,
        name: str,
        uid: str,
        event_type: str,
        reason: str,
        message: str,
        count: int = 1,
        first_timestamp: datetime | None = None,
        last_timestamp: datetime | None = None,
    ) -> str:
        """Post a core/v1 Event about a ScheduledJob; returns the Event's name.

        ``count`` and the timestamps let a repeated Event be posted again as it
        stood, when the API server has already expired the first one.
        """
        last = last_timestamp or datetime.now(UTC)
        body = {
            "metadata": {"generateName": f"{name}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": KIND,
                "name": name,
                "namespace": namespace,
                "uid": uid,
            },
            "type": event_type,
            "reason": reason,
            "message": message[:MESSAGE_LIMIT],
            "firstTimestamp": _micro_time(first_timestamp or last),
            "lastTimestamp": _micro_time(last),
            "count": count,
            "source": {"component": COMPONENT},
            "reportingComponent": f"{GROUP}/operator",
            "reportingInstance": self._instance,
        }
        created = _call(self._core.create_namespaced_event, namespace, body)
        return str(created.metadata.name)

    def patch_event(
        self, *, namespace: str, name: str, count: int, message: str, last_timestamp: datetime
    ) -> None:
        """Record that Event ``name`` happened again: its count, last time and latest message.

        Raises ObjectGone when the API server has expired it.
        """
        _call(
            self._core.patch_namespaced_event,
            name,
            namespace,
            {
                "count": count,
                "lastTimestamp": _micro_time(last_timestamp),
                "message": message[:MESSAGE_LIMIT],
            },
            _content_type="application/merge-patch+json",
        )
