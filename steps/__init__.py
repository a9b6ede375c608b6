"""ZenML steps, grouped like the visionzero package.

steps/<stage>/<step>.py calls visionzero/<stage>/ and lower stages only (tests/test_layout.py).
"""
