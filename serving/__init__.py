"""Serving side: the SavedModel contract (README.md) and a Python client (client.py)."""
