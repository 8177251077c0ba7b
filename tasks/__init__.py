"""Prefect tasks: thin wrappers around ``weightsim`` that move URIs, not tensors."""
