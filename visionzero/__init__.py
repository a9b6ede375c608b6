"""Vision Zero Risk: crash-risk model for New York City.

Domain logic shared by training and serving.
"""
