"""Webhooks: per-tenant and per-job endpoints for job events, signed by the Standard
Webhooks scheme and delivered from their own ``webhooks`` queue with retries.

``targets`` refuses URLs on private addresses, ``service`` manages endpoints (the API's
routes call it), ``delivery`` signs and sends one attempt and schedules the next,
``tasks`` is the Celery task. Events are recorded by :mod:`shared.webhooks`.
"""
