"""Benchmark harness: the served embeddings against the raw encoders, on the same data and the same machine.

`python -m bench.run` (what `make bench` runs) prepares a model store, writes the data, measures the encoders in
process (`bench.raw`), then the real `bentoml serve` under closed-loop load (`bench.load`), and reports both.
"""
