"""Counters read from Prometheus text pages that may restart from zero between reads.

The API server is killed and restarted by the nemesis, and so are the operators: a counter
that went down was reset, and its new value is all increase. Summing increases over the
reads gives the total across restarts (what happened between the last read and a kill is
lost; the nemesis reads just before it kills the API server).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

#: Verbs of apiserver_request_total that change something.
MUTATING_VERBS = frozenset({"POST", "PUT", "PATCH", "DELETE", "DELETECOLLECTION", "APPLY"})


def samples(page: str, name: str) -> dict[str, float]:
    """Every sample of metric ``name`` on a text page, by its label set as written."""
    found: dict[str, float] = {}
    for line in page.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
            series, _, value = line.rpartition(" ")
            found[series] = float(value)
    return found


def labels(series: str) -> dict[str, str]:
    """The labels of a sample's series (``name{a="1",b="2"}``)."""
    _, _, inside = series.partition("{")
    pairs = inside.rstrip("}").split('",')
    result: dict[str, str] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key:
            result[key.strip(",")] = value.strip('"')
    return result


class ResettingSum:
    """The summed increase of the series a filter accepts, across restarts of the process."""

    def __init__(self, accept: Callable[[dict[str, str]], bool]) -> None:
        self._accept = accept
        self._last: dict[str, float] | None = None
        self.total = 0.0

    def read(self, series: Mapping[str, float]) -> None:
        """Take one read of the counter's samples; the first read is where counting starts."""
        accepted = {key: value for key, value in series.items() if self._accept(labels(key))}
        if self._last is not None:
            for key, value in accepted.items():
                previous = self._last.get(key, 0.0)  # a series new since the last read
                self.total += value if value < previous else value - previous
        self._last = (self._last or {}) | accepted

    def restarted(self) -> None:
        """The process was restarted: every series counts from zero again."""
        if self._last is not None:
            self._last = {}


def mutating(on: str | None = None) -> Callable[[dict[str, str]], bool]:
    """Accept mutating requests, on resource ``on`` only if given."""

    def accept(series_labels: dict[str, str]) -> bool:
        return series_labels.get("verb") in MUTATING_VERBS and (
            on is None or series_labels.get("resource") == on
        )

    return accept


def exported(page: str, names: tuple[str, ...], **only: str) -> dict[str, dict[str, float]]:
    """Each of the counters ``names`` the page declares, per job (``namespace/name``).

    A counter declared with no samples yet is there, with no job; one the page does not
    declare is left out. The declaration names the counter with or without ``_total``,
    depending on the client and the format. ``only`` keeps the series with those labels.
    """
    found: dict[str, dict[str, float]] = {}
    for name in names:
        base = name.removesuffix("_total")
        if f"# TYPE {name} " in page or f"# TYPE {base} " in page:
            per_job: dict[str, float] = {}
            for series, value in samples(page, name).items():
                job = labels(series)
                if any(job.get(label) != value for label, value in only.items()):
                    continue
                key = f"{job.get('namespace', '')}/{job.get('name', '')}"
                per_job[key] = per_job.get(key, 0.0) + value
            found[name] = per_job
    return found
