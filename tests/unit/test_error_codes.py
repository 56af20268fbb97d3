"""The error codes live in one enum, and the System API's OpenAPI document lists the same ones."""

from __future__ import annotations

from importlib import resources

import yaml

from podcron.errors import ErrorCode

#: Answered on the control socket only: the System API says OPERATOR_UNAVAILABLE instead.
CONTROL_SOCKET_ONLY = {ErrorCode.NOT_READY}


def test_the_openapi_document_lists_every_code_the_system_api_answers() -> None:
    text = resources.files("podcron.sidecar").joinpath("openapi.yaml").read_text()
    schemas = yaml.safe_load(text)["components"]["schemas"]
    documented = schemas["ErrorEnvelope"]["properties"]["error"]["properties"]["code"]["enum"]
    assert sorted(documented) == sorted(set(ErrorCode) - CONTROL_SOCKET_ONLY)
