"""Celery workers: the app (`workers.celery_app:app`) and thin tasks (`workers.tasks`)."""
