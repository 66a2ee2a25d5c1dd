"""The BentoML behaviours that embedding_server/bentoml_internals.py relies on and BentoML does not document: each
test fails, saying what changed, when a BentoML upgrade changes one."""

from __future__ import annotations

import inspect
import json
import re

import psutil
from conftest import ROOT

from embedding_server import bentoml_internals

UPGRADE = "BentoML changed it: see embedding_server/bentoml_internals.py"


def test_usage_tracking_reads_the_variable_through_a_cache_that_can_be_cleared(monkeypatch):
    from bentoml._internal.utils.analytics import usage_stats

    assert hasattr(usage_stats.do_not_track, "cache_clear"), f"do_not_track is no longer cached: {UPGRADE}"
    for value, expected in (("true", True), ("false", False)):
        monkeypatch.setenv("BENTOML_DO_NOT_TRACK", value)
        usage_stats.do_not_track.cache_clear()
        assert usage_stats.do_not_track() is expected, f"BENTOML_DO_NOT_TRACK={value} is not read: {UPGRADE}"
    usage_stats.do_not_track.cache_clear()


def test_every_service_runs_in_a_worker_of_one_arbiter_named_on_its_command_line(server):
    """draining.py: a model service learns that the API has exited from its arbiter's children."""
    arbiter = psutil.Process(server.process.pid)
    workers = {bentoml_internals.worker_service(p.cmdline()): p for p in arbiter.children(recursive=True)}
    missing = {"embedding_api", "text_model", "image_model"} - set(workers)
    assert not missing, f"no worker with {bentoml_internals.WORKER_SERVICE_FLAG} for {missing}: {UPGRADE}"
    parents = {workers[name].ppid() for name in ("embedding_api", "text_model", "image_model")}
    assert len(parents) == 1, f"the services' workers have different parents {parents}: {UPGRADE}"


def test_the_service_type_names_a_model_service_apart_from_the_api():
    from _bentoml_impl.worker import service as worker

    source = inspect.getsource(worker)
    for value in (bentoml_internals.MODEL_SERVICE_TYPE, "entry_service"):
        assert f'server_context.service_type = "{value}"' in source, f"service_type {value!r} is gone: {UPGRADE}"


def test_the_openapi_document_keeps_its_schemas_where_this_one_refers(server):
    from _bentoml_sdk.service.openapi import REF_TEMPLATE

    assert REF_TEMPLATE == bentoml_internals.OPENAPI_REF_TEMPLATE, f"BentoML's $refs are now {REF_TEMPLATE}: {UPGRADE}"
    text = server.get("/docs.json").text
    schemas = json.loads(text)["components"]["schemas"]
    refs = set(re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', text))
    assert refs and refs <= set(schemas), f"refs to schemas the document lacks: {refs - set(schemas)}"


def test_bentoml_documents_the_error_bodies_that_the_corrected_document_drops():
    from _bentoml_sdk.service import openapi

    documented = set(re.findall(r"#/components/schemas/(\w+)", repr(openapi.error_responses)))
    assert documented == set(bentoml_internals.OPENAPI_ERROR_SCHEMAS), (
        f"BentoML's error bodies: {documented}: {UPGRADE}"
    )


def test_a_service_is_created_inside_uvicorns_signal_capture():
    """draining.py finds uvicorn's handler from the service's __init__."""
    import uvicorn

    serve = inspect.getsource(uvicorn.Server.serve)
    assert "capture_signals" in serve and serve.index("capture_signals") < serve.index("_serve("), (
        f"uvicorn no longer installs its signal handlers around the app's start-up: {UPGRADE}"
    )


def test_no_other_private_bentoml_name_is_used():
    """Only bentoml_internals.py may reach into BentoML's private modules."""
    offenders = [
        str(path.relative_to(ROOT))
        for path in [ROOT / "service.py", *(ROOT / "embedding_server").glob("*.py")]
        if path.name != "bentoml_internals.py"
        and any(name in path.read_text() for name in ("bentoml._internal", "_bentoml_sdk", "_bentoml_impl"))
    ]
    assert not offenders, f"private BentoML names outside bentoml_internals.py: {offenders}"
