# `make serve` and `make test` work on a fresh clone: each creates .venv and installs what it needs first.
VENV := .venv
PY := $(VENV)/bin/python
export BENTOML_DO_NOT_TRACK ?= true
# Give up on an unreachable Hugging Face hub after 10 s instead of the default minute.
export HF_HUB_ETAG_TIMEOUT ?= 10
export HF_HUB_DOWNLOAD_TIMEOUT ?= 10

.PHONY: install system-packages serve test bench bench-peers bench-duplicates soak lint build container replicas-demo clean

$(VENV)/.installed: requirements.txt requirements-torch.txt requirements-dev.txt requirements-client.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed

# HAProxy, buildah, podman and mmdebstrap from Debian's packages, when missing (as root).
system-packages:
	deploy/system-packages.sh

# A model that cannot be imported (CLIP without hub access) is reported and leaves its routes answering 503;
# the server starts all the same, hence the leading '-'.
serve: install
	-$(PY) import_models.py
	$(VENV)/bin/bentoml serve .

test: install system-packages
	$(VENV)/bin/pytest

# Raw encoders against the real server under load, in one run: bench/results/<cpu|gpu>.{md,json,png}.
bench: install
	$(PY) -m bench.run

# The peer, infinity-emb, in a venv of its own (bench/requirements-peers.txt), never beside the server's packages.
PEER_VENV := .venv-peers
$(PEER_VENV)/.installed: bench/requirements-peers.txt
	python3 -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(PEER_VENV)/bin/python -m pip install --quiet -r bench/requirements-peers.txt
	touch $@

# Our server and infinity-emb, one after the other, on the same rows: bench/results/peers.{md,json}.
bench-peers: install $(PEER_VENV)/.installed
	$(PY) -m bench.peers

# python -m client duplicates on 10k, 100k and 1M synthetic vectors (512-d and 384-d), exact and indexed, its time
# and peak memory, and the index's recall (on a 50,000 sample, and on the million by 4,000 sampled rows):
# bench/results/duplicates.{md,json}. About 11 minutes once the vectors files exist (written the first time, kept in
# .bench/duplicates/); `python -m bench.duplicates --dimensions 512` runs one dimension's half.
bench-duplicates: install
	$(PY) -m bench.duplicates

# 5 minutes of steady mixed load (valid and invalid requests) on the real server: no unexpected answer, RSS growth
# under 10 % after the warm-up, no fd leaked, no worker restarted; .bench/soak/soak.{json,png}. Exit 1 on a failure.
soak: install
	$(PY) -m bench.soak

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The GPU Bento (bentofile.yaml): `bentoml containerize embedding-server:latest` on a machine with Docker.
build: install
	$(PY) import_models.py
	$(VENV)/bin/bentoml build .

# The CPU image embedding-server:cpu (and :<bento version>) from the models in the store (deploy/image.py).
container: install system-packages
	$(PY) import_models.py
	$(PY) -m deploy.image build

# Two replicas behind HAProxy: one killed during a bulk run, then a rolling restart under load (deploy/replicas.py).
replicas-demo: install system-packages
	$(PY) -m deploy.replicas

clean:
	rm -rf $(VENV) $(PEER_VENV) .pytest_cache build
