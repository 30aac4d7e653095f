"""Cloud Storage: object data on disk."""
