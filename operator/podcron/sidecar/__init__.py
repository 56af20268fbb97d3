"""The sidecar: the System API (``/_sys/job``) for callers inside the pod network.

A Falcon ASGI app (:mod:`podcron.sidecar.app`) under uvicorn
(:mod:`podcron.sidecar.server`, :mod:`podcron.sidecar.protocol`) that reaches
the operator over the control socket (:mod:`podcron.sidecar.operator_client`)
and admits callers by their TCP peer address at accept
(:mod:`podcron.sidecar.admission`, :mod:`podcron.sidecar.cidr`,
:mod:`podcron.sidecar.discovery`). It never imports kopf or the engine: it
must start, and answer its probes, whatever state the operator is in.
"""
