"""The OpenAPI document at /docs.json, corrected so that it tells the truth.

BentoML 1.4 generates the document from the pydantic specs of each `@bentoml.api`, but:

- it keeps only the first member of a union among a body's top-level fields: `/v1/embeddings`'s `input` read as a
  string only (lists refused), and `dimensions`, `user`, `top_k` as not nullable;
- it documents its own error body (`{"error": "<text>"}`) with 400/404/500 on every route, where this API answers
  `{"error": {"code", "message", "index"}}` (OpenAI's error body on /v1) with the statuses of `errors.STATUS`;
- it omits the routes of mounted Starlette apps (`GET /health`, `GET /v1/models`) and the multipart form of the
  upload routes (router.py serves both forms);
- it declares OpenAPI 3.0 but writes pydantic's JSON Schema 2020-12 (`{"type": "null"}`, `const`).

`document()` takes BentoML's document and corrects it; `OpenAPIDocumentMiddleware` serves the result at /docs.json
in place of BentoML's.
"""

from __future__ import annotations

import json
from collections import defaultdict
from http import HTTPStatus
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from embedding_server.bentoml_internals import OPENAPI_ERROR_SCHEMAS, OPENAPI_REF_TEMPLATE
from embedding_server.errors import TEI_ERROR_TYPES, ErrorBody, ErrorCode, status_for
from embedding_server.routes import API_ROUTES, DOCS_PATH, HEALTH_PATH, MODELS_PATH, TEI_INFO_PATH, ApiRoute
from embedding_server.schemas import HealthResponse, OpenAIModelList, TeiInfo

_JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": OPENAPI_REF_TEMPLATE.format(model=name)}


ERROR_SCHEMAS: dict[str, dict[str, Any]] = {
    "ErrorCode": {"type": "string", "enum": [code.value for code in ErrorCode]},
    "ErrorDetail": {
        "type": "object",
        "required": ["code", "message"],
        "properties": {
            "code": _ref("ErrorCode"),
            "message": {"type": "string"},
            "index": {"type": "integer", "minimum": 0, "description": "The offending item, when there is one."},
        },
    },
    "ErrorResponse": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": _ref("ErrorDetail")},
        "description": "Every error of this API (but /v1's).",
    },
    "OpenAIErrorResponse": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type", "param", "code"],
                "properties": {
                    "message": {"type": "string"},
                    "type": {
                        "type": "string",
                        "enum": ["invalid_request_error", "authentication_error", "server_error"],
                    },
                    "param": {"type": "string", "nullable": True, "description": "The request field at fault."},
                    "code": _ref("ErrorCode"),
                },
            }
        },
        "description": "OpenAI's error body, on the /v1 routes and /embeddings.",
    },
    "TeiErrorResponse": {
        "type": "object",
        "required": ["error", "error_type"],
        "properties": {"error": {"type": "string"}, "error_type": {"type": "string", "enum": TEI_ERROR_TYPES}},
        "description": "text-embeddings-inference's error body, on its routes.",
    },
}
ERROR_BODY_SCHEMAS: dict[ErrorBody, str] = {
    "api": "ErrorResponse",
    "openai": "OpenAIErrorResponse",
    "tei": "TeiErrorResponse",
}


def error_responses(flavour: ErrorBody) -> dict[str, dict[str, Any]]:
    """Every status an ApiError can have on a route whose error body is `flavour`, with the codes that give it."""
    codes: dict[int, list[str]] = defaultdict(list)
    for code in ErrorCode:
        codes[int(status_for(code, flavour))].append(code.value)
    return {
        str(status): {
            "description": f"{HTTPStatus(status).phrase}: {', '.join(codes[status])}",
            "content": {_JSON: {"schema": _ref(ERROR_BODY_SCHEMAS[flavour])}},
        }
        for status in sorted(codes)
    }


def document(service: Any) -> dict[str, Any]:
    """BentoML's OpenAPI document of `service` (a `bentoml.Service`), corrected."""
    spec = service.openapi_spec.asdict()
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    for name in OPENAPI_ERROR_SCHEMAS:
        schemas.pop(name, None)
    schemas.update(ERROR_SCHEMAS)
    for route in API_ROUTES.values():
        if not route.declared:
            spec["paths"][route.path] = {"post": _operation(route, schemas)}
            continue
        operation = spec["paths"][route.path]["post"]
        for media in operation["requestBody"]["content"].values():
            _unflatten(media["schema"], route.request, "validation", schemas)
        ok = {str(status): response for status, response in operation["responses"].items()}["200"]
        for media in ok.get("content", {}).values():
            _unflatten(media["schema"], route.response, "serialization", schemas)
        if route.upload is not None:
            operation["requestBody"]["content"]["multipart/form-data"] = {"schema": route.upload.schema}
        operation["responses"] = {"200": ok, **error_responses(route.errors)}
    _add_get_routes(spec["paths"], schemas)
    if "/readyz" in spec["paths"]:
        spec["paths"]["/readyz"]["get"]["responses"]["503"] = {
            "description": "Not ready: a model is not available, or the server is stopping."
        }
    return _openapi_30(spec)


def _operation(route: ApiRoute, schemas: dict[str, Any]) -> dict[str, Any]:
    """A route that BentoML does not declare (TEI's, infinity's), documented from the route table alone."""
    tags = ["text-embeddings-inference"] if route.errors == "tei" else ["Service APIs"]
    request = _model_schema(route.request, "validation", schemas)
    response = _model_schema(route.response, "serialization", schemas)
    return {
        "tags": tags,
        "description": (route.request.__doc__ or "").strip() or None,
        "requestBody": {"required": True, "content": {_JSON: {"schema": request}}},
        "responses": {
            "200": {"description": "Successful Response", "content": {_JSON: {"schema": response}}},
            **error_responses(route.errors),
        },
    }


def _unflatten(schema: dict[str, Any], model: Any, mode: str, schemas: dict[str, Any]) -> None:
    """The fields of `schema` as pydantic describes them, every member of a union included."""
    full = _model_schema(model, mode, schemas)
    schema["properties"] = full.get("properties", {})
    if full.get("required"):
        schema["required"] = full["required"]


def _model_schema(model: Any, mode: str, schemas: dict[str, Any]) -> dict[str, Any]:
    """`model`'s JSON schema, the models it refers to added to the document's `schemas`."""
    full = model.model_json_schema(ref_template=OPENAPI_REF_TEMPLATE, mode=mode)
    for name, definition in full.pop("$defs", {}).items():
        schemas.setdefault(name, definition)
    return full


def _add_get_routes(paths: dict[str, Any], schemas: dict[str, Any]) -> None:
    """The GET routes that service.py mounts as a Starlette app, which BentoML does not document."""
    for model in (HealthResponse, OpenAIModelList, TeiInfo):
        schemas[model.__name__] = _model_schema(model, "serialization", schemas)
    health = {"content": {_JSON: {"schema": _ref("HealthResponse")}}}
    paths[HEALTH_PATH] = {
        "get": {
            "tags": ["Infrastructure"],
            "description": "Models loaded and answering, memory, uptime.",
            "responses": {
                "200": {"description": "Every configured model is available.", **health},
                "503": {"description": "A configured model is not available; `problems` says why.", **health},
            },
        }
    }
    unauthorized = error_responses("openai")[str(HTTPStatus.UNAUTHORIZED.value)]
    paths[MODELS_PATH] = {
        "get": {
            "tags": ["Service APIs"],
            "description": "The models that /v1/embeddings serves (OpenAI's model list).",
            "responses": {
                "200": {"description": "Successful Response", "content": {_JSON: {"schema": _ref("OpenAIModelList")}}},
                "401": unauthorized,
            },
        }
    }
    paths[TEI_INFO_PATH] = {
        "get": {
            "tags": ["text-embeddings-inference"],
            "description": "The text model and the limits, as text-embeddings-inference's /info.",
            "responses": {
                "200": {"description": "Successful Response", "content": {_JSON: {"schema": _ref("TeiInfo")}}},
                **{status: response for status, response in error_responses("tei").items() if status in ("401", "503")},
            },
        }
    }


def _openapi_30(node: Any) -> Any:
    """pydantic's JSON Schema 2020-12 written as OpenAPI 3.0's dialect: `anyOf [X, null]` as X with `nullable`,
    `const` as a one-value `enum`, a numeric `exclusiveMinimum`/`exclusiveMaximum` as the boolean form."""
    if isinstance(node, list):
        return [_openapi_30(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _openapi_30(value) for key, value in node.items()}
    members = node.get("anyOf")
    if isinstance(members, list) and {"type": "null"} in members:
        rest = [member for member in members if member != {"type": "null"}]
        del node["anyOf"]
        if node.get("default", "") is None:
            del node["default"]
        if len(rest) == 1 and "$ref" not in rest[0]:
            node = {**rest[0], **node}
        else:
            node["anyOf" if len(rest) > 1 else "allOf"] = rest
        node["nullable"] = True
    if "const" in node:
        node["enum"] = [node.pop("const")]
    for keyword, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(node.get(keyword), int | float) and not isinstance(node[keyword], bool):
            node[bound] = node[keyword]
            node[keyword] = True
    return node


class OpenAPIDocumentMiddleware:
    """Answers GET /docs.json with `document(service)`, built once; everything else goes on."""

    def __init__(self, app: ASGIApp, service: Any) -> None:
        self.app = app
        self.service = service
        self.body: bytes | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != DOCS_PATH or scope["method"] not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        if self.body is None:
            self.body = json.dumps(document(self.service)).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(self.body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": self.body if scope["method"] == "GET" else b""})
