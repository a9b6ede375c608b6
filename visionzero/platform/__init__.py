"""Where the project runs: settings from the environment, the ZenML stack, the model registry."""
