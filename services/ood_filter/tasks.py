"""Celery tasks of this service (wired by the platform)."""
