"""ZenML steps, grouped like the visionzero package.

steps/<stage>/<step>.py calls visionzero/<stage>/.
"""
