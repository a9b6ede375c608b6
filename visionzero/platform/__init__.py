"""Where the project runs: settings from the environment, the ZenML stack, the model registry,
alerts (Discord and the local outbox), used by every stage and the pipelines' failure hooks."""
