"""Training datasets: the quality gate, their storage in the `models` schema and their HTTP API."""
