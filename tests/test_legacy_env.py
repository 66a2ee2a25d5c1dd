"""The Node model-worker's `.env`, unchanged: its settings as Settings reads them, its model ids, and a real server
started with it."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import data_url, image_bytes, start_server, stop_server
from pydantic import ValidationError

from embedding_server.model_store import hub_model_id, store_name
from embedding_server.settings import LOG_LEVELS, Settings

# The model-worker's .env as its README shows it.
WORKER_ENV_FILE = """\
# Server Configuration
PORT=3001
HOST=0.0.0.0
NODE_ENV=production

# Model Configuration
MODEL_CACHE_DIR=./models
TEXT_MODEL_NAME=Xenova/all-MiniLM-L6-v2
IMAGE_MODEL_NAME=Xenova/clip-vit-base-patch32

# Performance
MAX_BATCH_SIZE=32
MAX_MEMORY_MB=2048

# Logging
LOG_LEVEL=warn
"""
TEXTS = ["Hello world", "a photo of a dog on the beach"]


def env_file_vars(text: str) -> dict[str, str]:
    """The variables of an env file as `docker run --env-file` reads them: KEY=VALUE lines, the value as written;
    blank lines and lines that start with # skipped."""
    variables = {}
    for line in text.splitlines():
        line = line.lstrip()
        if not line or line.startswith("#"):
            continue
        name, equals, value = line.partition("=")
        assert equals, f"{line!r} takes its value from the caller's environment, which this file does not mean"
        variables[name] = value
    return variables


WORKER_ENV = env_file_vars(WORKER_ENV_FILE)


@pytest.fixture
def settings_from(monkeypatch):
    """Settings read from exactly the variables given, whatever the tests' own environment holds."""

    def read(variables: dict[str, str]) -> Settings:
        for name in Settings.model_fields:
            monkeypatch.delenv(name.upper(), raising=False)
        for name, value in variables.items():
            monkeypatch.setenv(name, value)
        return Settings()

    return read


def test_the_worker_env_file_is_read_as_the_worker_meant_it(settings_from):
    settings = settings_from(WORKER_ENV)
    assert (settings.port, settings.host, settings.log_level) == (3001, "0.0.0.0", "WARNING")
    assert (settings.text_max_batch_size, settings.image_max_batch_size) == (32, 32)
    assert (settings.text_model_name, settings.image_model_name) == (
        "Xenova/all-MiniLM-L6-v2",
        "Xenova/clip-vit-base-patch32",
    )


@pytest.mark.parametrize(
    ("configured", "level"),
    [
        ("warn", "WARNING"),
        ("WARN", "WARNING"),
        ("Warning", "WARNING"),
        ("info", "INFO"),
        ("debug", "DEBUG"),
        ("error", "ERROR"),
        ("critical", "CRITICAL"),
        ("fatal", "CRITICAL"),
        ("http", "DEBUG"),
        ("verbose", "DEBUG"),
        ("trace", "DEBUG"),
        ("silly", "DEBUG"),
    ],
)
def test_log_levels_in_any_case_and_by_their_node_names(settings_from, configured, level):
    assert settings_from({"LOG_LEVEL": configured}).log_level == level


def test_an_unknown_log_level_stops_the_start_naming_the_accepted_ones(settings_from):
    with pytest.raises(ValidationError) as failure:
        settings_from({"LOG_LEVEL": "loud"})
    message = str(failure.value)
    assert "'loud' is not a log level" in message
    assert all(name in message for name in LOG_LEVELS)


@pytest.mark.parametrize(
    ("variables", "sizes"),
    [
        ({}, (128, 16)),
        ({"MAX_BATCH_SIZE": "32"}, (32, 32)),
        ({"MAX_BATCH_SIZE": "32", "TEXT_MAX_BATCH_SIZE": "64"}, (64, 32)),
        # Set explicitly to its default, the per-model setting still wins.
        ({"MAX_BATCH_SIZE": "32", "IMAGE_MAX_BATCH_SIZE": "16"}, (32, 16)),
        ({"MAX_BATCH_SIZE": "32", "TEXT_MAX_BATCH_SIZE": "8", "IMAGE_MAX_BATCH_SIZE": "4"}, (8, 4)),
    ],
)
def test_max_batch_size_sets_each_model_whose_own_setting_is_not_given(settings_from, variables, sizes):
    settings = settings_from(variables)
    assert (settings.text_max_batch_size, settings.image_max_batch_size) == sizes


def test_max_batch_size_is_checked_like_the_per_model_ones(settings_from):
    with pytest.raises(ValidationError, match="max_batch_size"):
        settings_from({"MAX_BATCH_SIZE": "0"})


def test_a_warning_for_each_worker_setting_the_server_does_not_act_on(settings_from):
    notes = settings_from(WORKER_ENV).legacy_setting_notes()
    assert [note.split("=")[0] for note in notes] == ["MODEL_CACHE_DIR", "MAX_MEMORY_MB", "NODE_ENV"]
    assert "BentoML model store" in notes[0] and "import_models.py" in notes[0]
    assert "memory limit" in notes[1] and "NODE_ENV=production" in notes[2]
    assert settings_from({}).legacy_setting_notes() == []


@pytest.mark.parametrize(
    ("conversion", "original"),
    [
        ("Xenova/all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"),
        ("xenova/ALL-minilm-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"),
        ("Xenova/distilbert-base-nli-stsb-mean-tokens", "sentence-transformers/distilbert-base-nli-stsb-mean-tokens"),
        ("Xenova/clip-vit-base-patch32", "openai/clip-vit-base-patch32"),
        ("Xenova/clip-vit-base-patch16", "openai/clip-vit-base-patch16"),
    ],
)
def test_a_conversion_stands_for_its_original(conversion, original):
    assert hub_model_id(conversion) == original
    assert store_name(conversion) == store_name(original)


def test_other_ids_stand_for_themselves():
    assert hub_model_id("Xenova/bert-base-uncased") == "Xenova/bert-base-uncased"
    assert store_name("Xenova/bert-base-uncased") == "xenova--bert-base-uncased"
    assert store_name("sentence-transformers/all-MiniLM-L6-v2") == "sentence-transformers--all-minilm-l6-v2"


@pytest.fixture(scope="module")
def worker_env_server(model_store, tmp_path_factory):
    """The server on the worker's .env. Its PORT and HOST do not fight the test's: they go into the service's
    configuration, over which the `--port` and `--host` that start_server gives `bentoml serve` win."""
    running = start_server(model_store, tmp_path_factory.mktemp("logs") / "worker-env.log", **WORKER_ENV)
    yield running
    stop_server(running)


def test_the_worker_env_serves_the_same_vectors_under_its_model_ids(worker_env_server, server):
    for path, body, model in (
        ("/embed/text", {"texts": TEXTS}, "Xenova/all-MiniLM-L6-v2"),
        ("/embed/image", {"images": [data_url(image_bytes())]}, "Xenova/clip-vit-base-patch32"),
    ):
        answer = worker_env_server.post(path, json=body)
        assert answer.status_code == 200, answer.text
        reference = server.post(path, json=body).json()["embeddings"]
        np.testing.assert_allclose(answer.json()["embeddings"], reference, atol=1e-6)
        assert answer.json()["metadata"]["model"] == model
    listed = worker_env_server.get("/v1/models").json()["data"]
    assert {m["id"] for m in listed} == {"Xenova/all-MiniLM-L6-v2", "Xenova/clip-vit-base-patch32"}
    # LOG_LEVEL=warn: the request log, at INFO, is silent; each setting the server does not act on is said once.
    log = worker_env_server.log.read_text()
    assert "POST /embed/text status=" not in log
    for setting in ("MODEL_CACHE_DIR=", "MAX_MEMORY_MB=", "NODE_ENV="):
        assert log.count(f"{setting}") == 1, (setting, log[-3000:])
    # The OpenAI route takes the conversion's id, its original's, or the short name.
    for name in ("Xenova/all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2"):
        answer = worker_env_server.post("/v1/embeddings", json={"model": name, "input": TEXTS})
        assert answer.status_code == 200 and answer.json()["model"] == "Xenova/all-MiniLM-L6-v2", answer.text
