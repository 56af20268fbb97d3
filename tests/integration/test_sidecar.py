"""The System API over real HTTP: a real operator, the sidecar under its real server, real peers.

One operator (watching one namespace) and two sidecars serve the whole module:
``open_sidecar`` allows 127.0.0.1 (the contract tests and schemathesis run
from there); ``filtering_sidecar`` allows only 127.0.0.2/32 and trusts
127.0.0.4 as a proxy. Clients bind to 127.0.0.x to be those callers.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis

from controlplane import ControlPlane

from ..ports import free_port
from ..waiting import wait_for
from .conftest import ROOT, TEARDOWN_STOP_SECONDS, OperatorProcess
from .sidecar_process import OPENAPI, SidecarProcess, client

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
JOB_PATH = "/_sys/job/{namespace}/{name}"
RUNS_PATH = "/_sys/job/{namespace}/{name}/runs"
SCHEMA = schemathesis.openapi.from_path(OPENAPI)

# Suspended: it runs only when triggered, so a scheduled tick never makes it busy.
SLOW_JOB = """
apiVersion: podcron.dev/v1alpha1
kind: ScheduledJob
metadata: {name: slow}
spec:
  entryPoint: cleanup
  schedule: {daily: {at: "02:30"}}
  suspend: true
  concurrencyPolicy: Forbid
  timeoutSeconds: 60
  args: {batches: 400}
"""


class Operator:
    """The module's operator; ``restart`` replaces it with a new process on the same socket."""

    def __init__(self, plane: ControlPlane, workdir: Path, namespace: str) -> None:
        self._plane = plane
        self._workdir = workdir
        self.socket = str(workdir / "control.sock")
        self._env = {
            "PODCRON_NAMESPACES": namespace,
            "PODCRON_CONTROL_SOCKET": self.socket,
            # Each operator its own metrics port: other tests' operators may hold the default.
            "PODCRON_METRICS_HOST": "127.0.0.1",
            "PODCRON_METRICS_PORT": str(free_port()),
        }
        self._generation = 0
        self.process = self._start()

    def _start(self) -> OperatorProcess:
        workdir = self._workdir / f"run-{self._generation}"
        workdir.mkdir()
        self._generation += 1
        return OperatorProcess(self._plane, workdir, self._env)

    def restart(self) -> None:
        """Start a new operator process (the old one must have stopped)."""
        self.process = self._start()


@pytest.fixture(scope="module")
def namespace(crd: ControlPlane) -> Iterator[str]:
    name = f"sidecar-{os.getpid()}"
    crd.kubectl("create", "namespace", name)
    yield name
    crd.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def operator(
    crd: ControlPlane, namespace: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Operator]:
    operator = Operator(crd, tmp_path_factory.mktemp("operator"), namespace)
    yield operator
    operator.process.stop(timeout=TEARDOWN_STOP_SECONDS)


def _sidecar(
    operator: Operator, tmp_path_factory: pytest.TempPathFactory, name: str, **env: str
) -> Iterator[SidecarProcess]:
    workdir = tmp_path_factory.mktemp(name)
    sidecar = SidecarProcess(
        dict(os.environ) | {"PODCRON_CONTROL_SOCKET": operator.socket} | env,
        workdir / "sidecar.log",
    )
    yield sidecar
    assert sidecar.stop() == 0


@pytest.fixture(scope="module")
def open_sidecar(
    operator: Operator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SidecarProcess]:
    yield from _sidecar(
        operator, tmp_path_factory, "open-sidecar", PODCRON_ALLOWED_CIDRS="127.0.0.1/32"
    )


@pytest.fixture(scope="module")
def filtering_sidecar(
    operator: Operator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SidecarProcess]:
    yield from _sidecar(
        operator,
        tmp_path_factory,
        "filtering-sidecar",
        PODCRON_ALLOWED_CIDRS="127.0.0.2/32",
        PODCRON_TRUSTED_PROXIES="127.0.0.4/32",
    )


@pytest.fixture(scope="module")
def jobs(crd: ControlPlane, namespace: str, open_sidecar: SidecarProcess) -> list[str]:
    """hello (every 2 s), report (every minute) and slow (suspended, Forbid) in the namespace."""
    for example in ("hello.yaml", "report.yaml"):
        crd.kubectl("apply", "-n", namespace, "-f", str(ROOT / "examples" / example))
    crd.kubectl("apply", "-n", namespace, "-f", "-", input=SLOW_JOB)
    ids = [f"{namespace}/{name}" for name in ("hello", "report", "slow")]
    session = client()
    wait_for(
        lambda: (
            [j["jobId"] for j in session.get(f"{open_sidecar.url}/_sys/job").json()["data"]] == ids
        ),
        timeout=20,
        what="the three jobs in /_sys/job",
    )
    return ids


def _validated(response: requests.Response, path: str) -> dict[str, Any]:
    """The response's JSON, after checking it against the OpenAPI document."""
    SCHEMA[path][response.request.method or "GET"].validate_response(response)
    body: dict[str, Any] = response.json()
    return body


def _trigger(session: requests.Session, url: str, **headers: str) -> requests.Response:
    """POST until accepted: a scheduled run of the same Forbid job may be active for a moment."""
    responses: list[requests.Response] = []

    def accepted() -> bool:
        responses.append(session.post(url, headers=headers))
        return responses[-1].status_code != 409

    wait_for(accepted, timeout=10, what=f"POST {url} not to be refused as running")
    return responses[-1]


def _error(response: requests.Response, path: str, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = _validated(response, path)
    assert body["data"] is None
    assert body["error"]["code"] == code
    assert body["error"]["message"]


def test_no_jobs_lists_empty_and_post_is_404(
    operator: Operator, open_sidecar: SidecarProcess, namespace: str
) -> None:
    session = client()
    wait_for(
        lambda: session.get(f"{open_sidecar.url}/readyz").status_code == 200,
        timeout=30,
        what="the operator's control socket",
    )
    listed = session.get(f"{open_sidecar.url}/_sys/job")
    assert listed.status_code == 200
    assert _validated(listed, "/_sys/job") == {"data": [], "meta": {"total": 0}}
    url = f"{open_sidecar.url}/_sys/job/{namespace}/hello"
    _error(session.post(url), JOB_PATH, 404, "JOB_NOT_FOUND")
    _error(session.get(url), JOB_PATH, 404, "JOB_NOT_FOUND")
    _error(session.get(f"{url}/runs"), RUNS_PATH, 404, "JOB_NOT_FOUND")


def test_jobs_are_listed_with_their_metadata(
    open_sidecar: SidecarProcess, jobs: list[str], namespace: str
) -> None:
    session = client()
    listed = session.get(f"{open_sidecar.url}/_sys/job")
    body = _validated(listed, "/_sys/job")
    assert body["meta"] == {"total": 3}
    hello, report, slow = body["data"]
    assert (hello["namespace"], hello["name"], hello["entryPoint"]) == (namespace, "hello", "hello")
    assert (hello["scheduleType"], hello["humanReadable"]) == ("fixed-rate", "every 2s")
    assert report["scheduleType"] == "cron"
    assert report["cronExpression"] == "* * * * *"
    assert slow["suspended"] is True
    assert slow["nextExecutionTime"] is None

    # slow, suspended and not yet triggered, is the one job that cannot change in between.
    one = session.get(f"{open_sidecar.url}/_sys/job/{namespace}/slow")
    assert one.status_code == 200
    assert _validated(one, JOB_PATH) == {"data": slow, "meta": {}}
    wait_for(
        lambda: (
            session.get(f"{open_sidecar.url}/_sys/job/{namespace}/hello").json()["data"][
                "successCount"
            ]
            >= 1
        ),
        timeout=10,
        what="hello's first scheduled run counted",
    )


def test_post_runs_the_job_with_trigger_manual(
    operator: Operator, open_sidecar: SidecarProcess, jobs: list[str], namespace: str
) -> None:
    response = _trigger(client(), f"{open_sidecar.url}/_sys/job/{namespace}/hello")
    assert response.status_code == 200
    data = _validated(response, JOB_PATH)["data"]
    assert (data["jobId"], data["triggered"]) == (f"{namespace}/hello", True)
    assert data["scheduledNextAt"].endswith("Z")
    wait_for(
        lambda: f"hello from {namespace}/hello (manual run" in operator.process.log(),
        timeout=10,
        what="the manual run of hello",
    )


def test_a_jobs_last_runs_are_listed_newest_first(
    open_sidecar: SidecarProcess, jobs: list[str], namespace: str
) -> None:
    session = client()
    url = f"{open_sidecar.url}/_sys/job/{namespace}/hello/runs"
    assert _trigger(session, url.removesuffix("/runs")).status_code == 200

    def manual_run_listed() -> dict[str, Any] | None:
        body = _validated(session.get(url), RUNS_PATH)
        return body if any(run["trigger"] == "manual" for run in body["data"]) else None

    body = wait_for(manual_run_listed, timeout=10, what="hello's manual run in its run history")
    runs = body["data"]
    assert body["meta"] == {"total": len(runs)}
    assert 2 <= len(runs) <= 20, "scheduled runs every 2 s and the manual one, at most 20"
    ends = [run["endTime"] for run in runs]
    assert ends == sorted(ends, reverse=True), "newest first"
    for run in runs:
        assert (run["status"], run["error"]) == ("success", None)
        assert run["startTime"] <= run["endTime"]
        assert run["durationSeconds"] >= 0
    assert {run["trigger"] for run in runs} == {"scheduled", "manual"}
    # A job with no run yet has an empty history, not a 404.
    report = session.get(f"{open_sidecar.url}/_sys/job/{namespace}/slow/runs")
    assert _validated(report, RUNS_PATH)["meta"]["total"] >= 0
    _error(
        session.get(f"{open_sidecar.url}/_sys/job/{namespace}/nothing/runs"),
        RUNS_PATH,
        404,
        "JOB_NOT_FOUND",
    )
    options = session.options(url)
    assert options.headers["Allow"] == "GET, HEAD, OPTIONS"
    refused = session.post(url)
    assert refused.status_code == 405
    assert refused.json()["error"]["code"] == "METHOD_NOT_ALLOWED"


def test_post_with_traceparent_runs_in_the_callers_trace(
    operator: Operator, open_sidecar: SidecarProcess, jobs: list[str], namespace: str
) -> None:
    response = _trigger(
        client(), f"{open_sidecar.url}/_sys/job/{namespace}/report", traceparent=TRACEPARENT
    )
    assert response.status_code == 200

    def report_in_callers_trace() -> bool:
        # The report job logs the trace headers its own downstream calls would carry.
        return any(
            "building the hourly report" in line and TRACE_ID in line
            for line in operator.process.log().splitlines()
        )

    wait_for(report_in_callers_trace, timeout=10, what="the report run in the caller's trace")


def test_post_on_a_running_forbid_job_is_409(
    open_sidecar: SidecarProcess, jobs: list[str], namespace: str
) -> None:
    session = client()
    url = f"{open_sidecar.url}/_sys/job/{namespace}/slow"
    assert session.post(url).status_code == 200
    wait_for(
        lambda: session.get(url).json()["data"]["running"],
        timeout=10,
        what="slow to be running",
    )
    _error(session.post(url), JOB_PATH, 409, "JOB_ALREADY_RUNNING")


def test_unknown_paths_and_methods_answer_in_the_envelope(open_sidecar: SidecarProcess) -> None:
    session = client()
    missing = session.get(f"{open_sidecar.url}/_sys/jobs")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "NOT_FOUND"
    wrong = session.delete(f"{open_sidecar.url}/_sys/job")
    assert wrong.status_code == 405
    assert wrong.json() == {
        "data": None,
        "meta": {},
        "error": {
            "code": "METHOD_NOT_ALLOWED",
            "message": "DELETE is not allowed on /_sys/job; allowed: GET, HEAD, OPTIONS",
        },
    }
    options = session.options(f"{open_sidecar.url}/_sys/job")
    assert options.status_code == 200
    assert options.headers["Allow"] == wrong.headers["Allow"] == "GET, HEAD, OPTIONS"
    assert _validated(options, "/_sys/job") == {
        "data": {"methods": ["GET", "HEAD", "OPTIONS"]},
        "meta": {},
    }


def test_head_answers_on_every_get_route(
    open_sidecar: SidecarProcess, jobs: list[str], namespace: str
) -> None:
    session = client()
    changing = ("/_sys/job", f"/_sys/job/{namespace}/hello/runs")
    for path in (
        *changing,
        f"/_sys/job/{namespace}/slow",
        "/_sys/openapi.yaml",
        "/healthz",
    ):
        got = session.get(f"{open_sidecar.url}{path}", headers={"Accept-Encoding": "identity"})
        head = session.head(f"{open_sidecar.url}{path}", headers={"Accept-Encoding": "identity"})
        assert head.status_code == got.status_code == 200, path
        assert head.content == b""
        assert head.headers["Content-Type"] == got.headers["Content-Type"]
        if path not in changing:  # hello runs every 2 s: they may change between the requests
            assert head.headers["Content-Length"] == str(len(got.content))


def test_the_openapi_document_is_served_as_shipped(open_sidecar: SidecarProcess) -> None:
    response = client().get(f"{open_sidecar.url}/_sys/openapi.yaml")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/yaml"
    assert response.content == OPENAPI.read_bytes()


def _refused(session: requests.Session, method: str, url: str, **options: Any) -> bool:
    """Whether the server closed the connection without answering a word."""
    try:
        session.request(method, url, timeout=10, **options)
    except requests.ConnectionError:
        return True
    return False


def test_the_allowlist_is_judged_by_the_tcp_peer_at_accept(
    filtering_sidecar: SidecarProcess, jobs: list[str], namespace: str
) -> None:
    base = filtering_sidecar.url
    allowed, denied = client("127.0.0.2"), client("127.0.0.3")
    one = f"{base}/_sys/job/{namespace}/hello"
    assert allowed.get(f"{base}/_sys/job").json()["meta"]["total"] == 3
    assert allowed.get(one).status_code == 200
    assert allowed.get(f"{one}/runs").status_code == 200
    assert _trigger(allowed, one).status_code == 200
    # Every path, known or not: an outsider does not even learn that this is HTTP.
    for method, url in [
        ("GET", f"{base}/_sys/job"),
        ("GET", one),
        ("POST", one),
        ("GET", f"{one}/runs"),
        ("GET", f"{base}/_sys/openapi.yaml"),
        ("GET", f"{base}/_sys/nothing"),
        ("GET", f"{base}/healthz"),
    ]:
        assert _refused(denied, method, url), (method, url)
    for probe in ("/healthz", "/readyz"):
        assert denied.get(f"{filtering_sidecar.probe_url}{probe}").status_code == 200
    assert allowed.get(f"{filtering_sidecar.probe_url}/_sys/job").status_code == 404
    assert "System API: refused a connection from 127.0.0.3: not in allowedCIDRs" in (
        filtering_sidecar.log()
    )


def test_forwarded_for_counts_only_from_a_trusted_proxy(
    filtering_sidecar: SidecarProcess, jobs: list[str]
) -> None:
    url = f"{filtering_sidecar.url}/_sys/job"
    spoofing, proxy = client("127.0.0.3"), client("127.0.0.4")
    assert _refused(spoofing, "GET", url, headers={"X-Forwarded-For": "127.0.0.2"})
    assert proxy.get(url, headers={"X-Forwarded-For": "127.0.0.2"}).status_code == 200
    _error(proxy.get(url, headers={"X-Forwarded-For": "127.0.0.3"}), "/_sys/job", 403, "FORBIDDEN")
    runs = f"{url}/{jobs[0]}/runs"
    _error(proxy.get(runs, headers={"X-Forwarded-For": "127.0.0.3"}), RUNS_PATH, 403, "FORBIDDEN")
    assert proxy.get(url).status_code == 403, "the proxy itself is not allowed"
    # A client may prepend anything; only the hop the trusted proxy appended counts.
    forged = {"X-Forwarded-For": "127.0.0.2, 127.0.0.3"}
    assert proxy.get(url, headers=forged).status_code == 403
    allowed = client("127.0.0.2")
    assert allowed.get(url, headers={"X-Forwarded-For": "127.0.0.3"}).status_code == 200
    assert "denied GET /_sys/job from peer 127.0.0.4 (X-Forwarded-For '127.0.0.3')" in (
        filtering_sidecar.log()
    )


def test_schemathesis_finds_no_contract_violation(
    open_sidecar: SidecarProcess, jobs: list[str], tmp_path: Path
) -> None:
    # Every phase (examples, coverage, fuzzing, stateful: it follows the list to
    # real jobs and triggers them), every check, a fixed seed for reproducibility.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "run",
            str(OPENAPI),
            "--url",
            open_sidecar.url,
            "--checks",
            "all",
            "--max-examples",
            "25",
            "--seed",
            "1",
            "--generation-database",
            "none",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "No issues found" in result.stdout


def test_operator_down_then_back(
    operator: Operator, open_sidecar: SidecarProcess, jobs: list[str], namespace: str
) -> None:
    session = client()
    base = open_sidecar.url
    assert operator.process.stop() == 0

    _error(session.get(f"{base}/readyz"), "/readyz", 503, "OPERATOR_UNAVAILABLE")
    listed = session.get(f"{base}/_sys/job")
    assert listed.status_code == 200
    assert _validated(listed, "/_sys/job") == {"data": [], "meta": {"total": 0}}
    one = f"{base}/_sys/job/{namespace}/hello"
    _error(session.post(one), JOB_PATH, 503, "OPERATOR_UNAVAILABLE")
    _error(session.get(one), JOB_PATH, 503, "OPERATOR_UNAVAILABLE")
    _error(session.get(f"{one}/runs"), RUNS_PATH, 503, "OPERATOR_UNAVAILABLE")
    assert session.get(f"{base}/healthz").status_code == 200

    operator.restart()
    wait_for(
        lambda: session.get(f"{base}/readyz").status_code == 200,
        timeout=30,
        what="readyz to recover",
    )
    wait_for(
        lambda: session.get(f"{base}/_sys/job").json()["meta"]["total"] == 3,
        timeout=20,
        what="the jobs to be listed again",
    )
    assert _trigger(session, one).status_code == 200


def test_the_list_is_gzipped_and_revalidated_by_etag(
    open_sidecar: SidecarProcess, jobs: list[str]
) -> None:
    session = client()
    url = f"{open_sidecar.url}/_sys/job"

    def same_version() -> tuple[requests.Response, requests.Response] | None:
        # hello runs every 2 s and changes the list: compare two answers of one version.
        plain = session.get(url, headers={"Accept-Encoding": "identity"})
        packed = session.get(url, headers={"Accept-Encoding": "gzip"}, stream=True)
        if plain.headers["ETag"] != packed.headers["ETag"]:
            return None
        return plain, packed

    plain, packed = wait_for(same_version, timeout=20, what="two answers of one list version")
    assert "Content-Encoding" not in plain.headers
    assert packed.headers["Content-Encoding"] == "gzip"
    assert plain.headers["Vary"] == packed.headers["Vary"] == "Accept-Encoding"
    body = packed.raw.read(decode_content=False)
    assert gzip.decompress(body) == plain.content
    assert len(body) < len(plain.content)
    _validated(plain, "/_sys/job")

    etag = plain.headers["ETag"]
    revalidated: list[requests.Response] = []

    def not_modified() -> bool:
        revalidated.append(session.get(url, headers={"If-None-Match": etag}))
        return revalidated[-1].status_code == 304

    def modified() -> bool:
        revalidated.append(session.get(url, headers={"If-None-Match": etag}))
        return revalidated[-1].status_code == 200

    # The ETag is the current one for a while, then hello's runs change the list.
    if session.head(url).headers["ETag"] == etag:
        wait_for(not_modified, timeout=5, interval=0.01, what="a 304 for the current ETag")
        assert revalidated[-1].content == b""
        assert revalidated[-1].headers["ETag"] == etag
    wait_for(modified, timeout=20, what="a new version of the list after hello ran")
    assert revalidated[-1].headers["ETag"] != etag
    assert revalidated[-1].json()["meta"]["total"] == 3


def test_an_encoded_slash_never_reaches_a_job(
    operator: Operator, open_sidecar: SidecarProcess, jobs: list[str], namespace: str
) -> None:
    session = client()
    before = session.get(f"{open_sidecar.url}/_sys/job/{namespace}/report").json()["data"]
    for method in ("POST", "GET"):
        response = session.request(method, f"{open_sidecar.url}/_sys/job/{namespace}%2Freport")
        # A path the server decodes before routing would reach report: it must not.
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "BAD_REQUEST"
    after = session.get(f"{open_sidecar.url}/_sys/job/{namespace}/report").json()["data"]
    assert after["totalExecutions"] == before["totalExecutions"]
    assert after["running"] is False


def test_a_manual_run_is_logged_with_the_client_the_filter_judged(
    filtering_sidecar: SidecarProcess, jobs: list[str], namespace: str
) -> None:
    proxy = client("127.0.0.4")
    url = f"{filtering_sidecar.url}/_sys/job/{namespace}/hello"
    assert _trigger(proxy, url, **{"X-Forwarded-For": "127.0.0.2"}).status_code == 200
    # The text format shows job_id in brackets.
    job = f"{namespace}/hello"
    line = f"[{job}] manual run of {job} requested by 127.0.0.2 (via 127.0.0.4)"
    wait_for(lambda: line in filtering_sidecar.log(), timeout=10, what="the manual-run line")
