"""Answering requests: validation and vectorised prediction for service.py, and building Bentos."""
