"""Judging a model: holdout metrics vs production and the status quo, the deploy rule, plots."""
