"""Monitoring: the served models judged by what happened, drift, the canary decision."""
