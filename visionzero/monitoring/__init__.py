"""Monitoring: the served models judged by what happened, their operational health, drift,
the canary decision."""
