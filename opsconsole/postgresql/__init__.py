"""Django's PostgreSQL backend, with a client-side bound on every wait for an answer
(see base.py). settings.py selects it for every PostgreSQL DATABASE_URL."""

# The key of DATABASES["default"] that holds the bound, in seconds. Here, not in base.py,
# so code that only names it (the monitor command) runs where psycopg is not installed:
# the embedded default is SQLite.
CLIENT_TIMEOUT_KEY = "CLIENT_TIMEOUT"
