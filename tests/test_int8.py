"""QUANTIZE=int8 through import_models.py --int8 and a real server: the gate's figures stored with the model, the
int8 export served where it passed, refused with those figures where it did not."""

from __future__ import annotations

import io

import numpy as np
import pytest
import yaml
from conftest import copy_store, data_url, image_bytes, run_import, start_server, stop_server
from PIL import Image
from pydantic import ValidationError

from embedding_server.settings import Settings
from models.calibration import photos
from models.image import ImageEncoder
from models.onnx_backend import INT8_ONNX_FILE
from models.quantize import MIN_COSINE
from models.runtime import Runtime

FAILED_GATE = {
    "passed": False,
    "inputs": 1786,
    "mean_cosine": 0.99,
    "min_cosine": 0.98,
    "pair_agreement": 0.95,
    "similar_pairs": 1900,
    "failures": ["agreement on the pairs above 0.9 0.9500 < 0.97"],
}


def test_int8_is_served_only_where_its_gate_passed(model_store, clip_dir, tmp_path):
    """CLIP's image tower imported with --int8 is served in int8, within the gate of its fp32 export; the text
    model, stored with an int8 export that failed its gate, is refused with the figures that failed."""
    home = copy_store(model_store, tmp_path / "home", keep="")
    result = run_import(home, "--force", "--int8", "--image-source", str(clip_dir), env={"TEXT_MODEL_NAME": ""})
    assert result.returncode == 0, result.stderr
    assert "image: int8 export passed" in result.stdout
    [clip] = [
        p for p in (home / "models" / "openai--clip-vit-base-patch32").iterdir() if (p / INT8_ONNX_FILE).is_file()
    ]
    gate = yaml.safe_load((clip / "model.yaml").read_text())["metadata"]["int8"]
    assert gate["passed"] and gate["failures"] == [] and gate["inputs"] == len(photos()[1]), gate
    assert gate["min_cosine"] >= MIN_COSINE and gate["similar_pairs"] > 0 and gate["calibration_inputs"] > 0

    [text_yaml] = (home / "models" / "sentence-transformers--all-minilm-l6-v2").glob("*/model.yaml")
    stored = yaml.safe_load(text_yaml.read_text())
    stored["metadata"]["int8"] = FAILED_GATE
    text_yaml.write_text(yaml.safe_dump(stored))
    (text_yaml.parent / INT8_ONNX_FILE).write_bytes((clip / INT8_ONNX_FILE).read_bytes())  # there, yet not served

    server = start_server(home, tmp_path / "int8.log", ready_path="/health", QUANTIZE="int8")
    try:
        health = server.get("/health").json()
        assert health["models"] == {"text": False, "image": True}
        assert "failed its quality check" in health["problems"]["text"]
        assert "0.9500 < 0.97" in health["problems"]["text"] and "QUANTIZE=none" in health["problems"]["text"]
        refused = server.post("/embed/text", json={"texts": ["hi"]})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "model_unavailable"

        sent = [image_bytes(color=color, size=(40, 30)) for color in ((200, 30, 40), (20, 120, 240), (90, 90, 90))]
        response = server.post("/embed/image", json={"images": [data_url(data) for data in sent]})
        assert response.status_code == 200, response.text
        served = np.array(response.json()["embeddings"], dtype=np.float32)
        fp32 = ImageEncoder.load(clip, Runtime("onnx", "cpu")).encode([Image.open(io.BytesIO(data)) for data in sent])
        cosines = np.sum(served * fp32, axis=1)
        assert np.all(cosines >= MIN_COSINE) and not np.allclose(served, fp32, atol=1e-5), cosines  # int8, close
        assert server.post("/embed/image-text", json={"texts": ["a cat"]}).status_code == 200  # fp32 text tower
    finally:
        stop_server(server)


@pytest.mark.parametrize("setting", [{"backend": "torch"}, {"backend": "openvino"}, {"device": "cuda"}])
def test_int8_elsewhere_than_onnx_runtime_on_the_cpu_stops_the_start(setting):
    with pytest.raises(ValidationError, match="QUANTIZE=int8 runs on ONNX Runtime on the CPU only"):
        Settings(quantize="int8", **setting)
    assert Settings(quantize="none", **setting).quantize == "none"
