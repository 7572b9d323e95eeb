"""FastAPI gateway."""
