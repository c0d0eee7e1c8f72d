"""Beyond one process: Triton model repositories (config, writer, checker), ``sedeploy serve`` and the load test."""
