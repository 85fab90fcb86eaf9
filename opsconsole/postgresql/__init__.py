"""Django's PostgreSQL backend, with a client-side bound on every wait for an answer
(see base.py). settings.py selects it for every PostgreSQL DATABASE_URL."""
