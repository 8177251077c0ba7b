"""Prefect flows: compose the tasks into the pipeline a user runs or deploys."""
