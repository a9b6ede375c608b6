"""ZenML steps: thin wrappers around the visionzero package, one file per step."""
