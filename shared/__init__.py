"""tailsynth: the library common to the services (settings, DB, storage, Celery, image IO)."""
