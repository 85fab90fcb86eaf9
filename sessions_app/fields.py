"""Text columns that hold whatever a host, a transcript or a scheduler says.

The one place text is cleaned before the database sees it: every save, update() and
bulk write of these fields goes through get_prep_value. A NUL (PostgreSQL's text and
jsonb refuse it) or a lone surrogate (not UTF-8; SQLite's driver refuses it) in an
agent's output, a job's command or a host's event is dropped here instead of costing
the record (wrapper.formats.clean_text says how). The columns are Django's own:
deconstruct() names the stock field, so no migration sees a difference.
"""

from __future__ import annotations

from django.db import models

from wrapper.formats import clean_json, clean_text


class CleanCharField(models.CharField):
    def get_prep_value(self, value):
        value = super().get_prep_value(value)
        return clean_text(value) if isinstance(value, str) else value

    def deconstruct(self):
        name, _path, args, kwargs = super().deconstruct()
        return name, "django.db.models.CharField", args, kwargs


class CleanTextField(models.TextField):
    def get_prep_value(self, value):
        value = super().get_prep_value(value)
        return clean_text(value) if isinstance(value, str) else value

    def deconstruct(self):
        name, _path, args, kwargs = super().deconstruct()
        return name, "django.db.models.TextField", args, kwargs


class CleanJSONField(models.JSONField):
    def get_prep_value(self, value):
        return super().get_prep_value(clean_json(value))

    def deconstruct(self):
        name, _path, args, kwargs = super().deconstruct()
        return name, "django.db.models.JSONField", args, kwargs
