"""What the tests, the benchmark, the soak and the replicas demo share to run the real server: `bentoml serve`
processes on free ports with homes of their own (`servers`), model stores filled by import_models.py (`stores`),
the figures of a server's process tree (`processes`) and CLIPs with random weights (`random_clip`).

Not production code: no bentofile includes it.
"""
