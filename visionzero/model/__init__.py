"""The crash-risk model: features shared with serving, the two-stage model, risk levels, tuning."""
