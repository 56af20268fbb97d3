"""ScheduledJob manifests checked offline, as the API server and then the operator would.

Two passes, each the rules' own source rather than a copy of them:

1. the CRD's OpenAPI schema, read from the CRD that ships in this package
   (types, required fields, enums, bounds, lengths, and unknown fields as
   ``kubectl``'s strict field validation refuses them);
2. the operator's own :func:`podcron.controller.jobspecs.build_spec`: the
   schedule, the time zone, the policies, the timeouts, and the entry point
   resolved in this Python environment against ``allowedModules``.

Of the CRD's CEL rules, those that are one ``self.matches('...')`` are
applied in the first pass, with their own messages (such as the at most 6
digits of an ``every`` number, which the operator would accept); the others
check nothing the second pass does not, in the operator's words.

YAML is read as ``kubectl`` reads it: ``at: 12:30`` is the string
``"12:30"``, not YAML 1.1's base-60 number 750.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from podcron.controller.jobspecs import build_spec
from podcron.engine import JobSpec
from podcron.errors import PodcronError

API_VERSION = "podcron.dev/v1alpha1"
KIND = "ScheduledJob"
_CRD = "scheduledjobs.podcron.dev.yaml"
# Kubernetes' rule for object names (an RFC 1123 subdomain).
_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
# A CEL rule that is one regular expression; RE2 and Python agree on those without escapes.
_MATCHES_RULE = re.compile(r"self\.matches\('([^'\\]*)'\)")
# Fields the API server handles itself, outside the CRD's schema.
_OBJECT_FIELDS = ("apiVersion", "kind", "metadata", "status")


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong, as one line: ``file:doc: field: message``.

    ``job_id`` is the ``namespace/name`` of the document at fault, where it has a name.
    """

    where: str
    text: str
    job_id: str | None = None

    def __str__(self) -> str:
        return f"{self.where}: {self.text}"


@dataclass(frozen=True, slots=True)
class CheckedJob:
    """A ScheduledJob that passed every check, as the operator would register it."""

    where: str
    spec: JobSpec


class _KubectlLoader(yaml.SafeLoader):
    """PyYAML's safe loader without YAML 1.1's base-60 numbers, which kubectl never reads."""


_KubectlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if not tag.endswith((":int", ":float"))]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
# PyYAML's own patterns for ints and floats, less their base-60 alternatives.
_KubectlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)
_KubectlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9_]+(?:[eE][-+][0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def load_documents(text: str) -> list[Any]:
    """The YAML documents in ``text``, read as kubectl reads them; raises ``yaml.YAMLError``."""
    return list(yaml.load_all(text, Loader=_KubectlLoader))  # a SafeLoader: no Python objects


@functools.cache
def crd_schema() -> Mapping[str, Any]:
    """The ScheduledJob CRD's OpenAPI schema (its one served version's)."""
    crd = yaml.safe_load(resources.files("podcron").joinpath("crds", _CRD).read_text())
    (version,) = crd["spec"]["versions"]
    schema: Mapping[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def check_file(path: Path, *, allowed_modules: Sequence[str] | None) -> list[CheckedJob | Problem]:
    """Each ScheduledJob in ``path`` that passes, and every problem found, in document order.

    Other kinds are skipped. ``allowed_modules`` ``None`` checks each
    ``module:function`` reference as if ``allowedModules`` allowed its
    top-level package.
    """
    try:
        documents = load_documents(path.read_text())
    except OSError as error:
        return [Problem(str(path), f"cannot read: {error.strerror or error}")]
    except yaml.YAMLError as error:
        return [Problem(str(path), "not valid YAML: " + " ".join(str(error).split()))]
    found: list[CheckedJob | Problem] = []
    for number, document in enumerate(documents, start=1):
        if document is None or not _is_scheduled_job(document):
            continue
        where = f"{path}:{number}"
        named = _job_id(document)
        problems = [Problem(where, text, named) for text in document_problems(document)]
        if problems:
            found.extend(problems)
            continue
        spec_or_problem = _build(document, allowed_modules)
        if isinstance(spec_or_problem, str):
            found.append(Problem(where, spec_or_problem, named))
        else:
            found.append(CheckedJob(where, spec_or_problem))
    return found


def _job_id(document: Mapping[str, Any]) -> str | None:
    """A document's ``namespace/name`` (namespace ``default`` unless given), if it has a name."""
    metadata = document.get("metadata")
    if not isinstance(metadata, Mapping):
        return None
    name, namespace = metadata.get("name"), metadata.get("namespace") or "default"
    if not isinstance(name, str) or not isinstance(namespace, str):
        return None
    return f"{namespace}/{name}"


def _is_scheduled_job(document: object) -> bool:
    if not isinstance(document, Mapping):
        return False
    api_version = document.get("apiVersion")
    group = api_version.partition("/")[0] if isinstance(api_version, str) else None
    return document.get("kind") == KIND or group == API_VERSION.partition("/")[0]


def document_problems(document: Mapping[str, Any]) -> list[str]:
    """What the API server would refuse in a ScheduledJob, one ``field: message`` each."""
    problems = []
    if document.get("apiVersion") != API_VERSION or document.get("kind") != KIND:
        problems.append(
            f"apiVersion/kind: must be {API_VERSION} {KIND} "
            f"(got {document.get('apiVersion')!r} {document.get('kind')!r})"
        )
    problems.extend(_metadata_problems(document.get("metadata")))
    body = {key: value for key, value in document.items() if key not in _OBJECT_FIELDS}
    problems.extend(f"{field}: {message}" for field, message in _walk(body, crd_schema(), ""))
    return problems


def _metadata_problems(metadata: object) -> Iterator[str]:
    if not isinstance(metadata, Mapping):
        yield "metadata.name: Required value"
        return
    name = metadata.get("name")
    if name is None and metadata.get("generateName"):
        return
    if not isinstance(name, str) or not name:
        yield "metadata.name: Required value"
    elif len(name) > 253 or not _NAME.fullmatch(name):
        yield (
            f"metadata.name: Invalid value: {name!r}: a lowercase RFC 1123 subdomain must "
            "consist of lower case alphanumeric characters, '-' or '.', and must start and "
            "end with an alphanumeric character"
        )


_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
}


def _walk(value: Any, schema: Mapping[str, Any], path: str) -> Iterator[tuple[str, str]]:
    """The schema's complaints about ``value`` at ``path``, in the API server's words."""
    kind = schema.get("type")
    if kind is not None and not _has_type(value, kind):
        yield path, f"must be of type {kind} (got {_show(value)})"
        return
    if "enum" in schema and value not in schema["enum"]:
        supported = ", ".join(json.dumps(option) for option in schema["enum"])
        yield path, f"Unsupported value: {json.dumps(value)}: supported values: {supported}"
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            yield path, f"should be at least {schema['minLength']} chars long"
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            yield path, f"Too long: may not be longer than {schema['maxLength']}"
        for rule in schema.get("x-kubernetes-validations", ()):
            pattern = _MATCHES_RULE.fullmatch(rule["rule"].strip())
            if pattern is not None and re.search(pattern[1], value) is None:
                yield path, " ".join(rule["message"].split())
    elif isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            yield path, f"should be greater than or equal to {schema['minimum']}"
        if "maximum" in schema and value > schema["maximum"]:
            yield path, f"should be less than or equal to {schema['maximum']}"
    elif isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            yield from _walk(item, schema["items"], f"{path}[{index}]")
    elif isinstance(value, dict) and not schema.get("x-kubernetes-preserve-unknown-fields"):
        # The API server prunes nulls from fields that are not nullable: they count as unset.
        present = {key: item for key, item in value.items() if item is not None}
        properties = schema.get("properties", {})
        for name in schema.get("required", ()):
            if name not in present:
                yield _join(path, name), "Required value"
        for key, item in present.items():
            if key in properties:
                yield from _walk(item, properties[key], _join(path, key))
            else:
                yield _join(path, key), "unknown field"


def _has_type(value: object, kind: str) -> bool:
    if isinstance(value, bool):  # an int to Python, never to JSON
        return kind == "boolean"
    return isinstance(value, _TYPES[kind])


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _show(value: object) -> str:
    return "null" if value is None else json.dumps(value, default=str)


def _build(document: Mapping[str, Any], allowed_modules: Sequence[str] | None) -> JobSpec | str:
    """The operator's record for the job, or its one-line complaint."""
    metadata = document["metadata"]
    namespace, _, name = (_job_id(document) or f"default/{metadata['generateName']}").partition("/")
    spec = document["spec"]
    if allowed_modules is None:
        module = str(spec.get("entryPoint", "")).partition(":")[0]
        package = module.partition(".")[0]
        allowed_modules = [package, f"{package}.*"] if package else []
    try:
        return build_spec(namespace, name, spec, allowed_modules=allowed_modules)
    except PodcronError as error:
        return str(error)
