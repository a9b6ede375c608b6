"""Putting models in front of users: deployment state, local canary, Kubernetes."""
