"""Vision Zero Risk: crash-risk model for New York City (domain logic shared by training and serving)."""
