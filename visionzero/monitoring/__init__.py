"""Watching what serves: operational canary metrics, and the monitoring built on them."""
