"""What counts as a database that is away (cannot be reached, lost the connection, gave
up waiting), as against a value it refused (IntegrityError, DataError, ...). The first
keeps a record for the next pass or answers 503; the second refuses that record alone.
One definition for the spool's ingest, a host's report and the web's outage page."""

from __future__ import annotations

from django.db import InterfaceError, OperationalError

DATABASE_AWAY = (OperationalError, InterfaceError)
