"""Serving services: plain classes and functions over numpy arrays and the loaded bundle (no FastAPI)."""
