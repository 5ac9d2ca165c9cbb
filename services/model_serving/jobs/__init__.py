"""Training jobs: their HTTP API, publication to the training worker, and their end in the registry."""
