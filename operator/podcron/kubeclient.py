"""The one way podcron makes a Kubernetes API client (kopf makes its own).

In-cluster credentials in a pod, the current kubeconfig elsewhere. Each
client gets a configuration of its own: the kubernetes package's global
default is never changed, so one caller's pool size or retries cannot leak
into another's.
"""

from __future__ import annotations

from kubernetes import client, config


def api_client(*, pool_size: int | None = None, retries: int | None = None) -> client.ApiClient:
    """A new API client; raises the client's ConfigException when no credentials are found.

    ``pool_size`` is how many connections are kept (one per calling thread
    is what avoids waiting for one); ``retries`` replaces urllib3's default
    for callers that pace their own retries.
    """
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        config.load_kube_config(client_configuration=configuration)
    if pool_size is not None:
        configuration.connection_pool_maxsize = pool_size
    if retries is not None:
        configuration.retries = retries
    return client.ApiClient(configuration)
