"""Judging a model: holdout metrics against production and the status quo, the deploy rule, plots."""
