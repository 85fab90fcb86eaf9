"""The admin says it is opsconsole's, keeps django-axes' access logs out of its index,
and names the alert channel form's fields in words a person uses."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db


def test_the_admin_is_branded_and_has_no_axes_section(admin_client):
    """Before: 'Django administration', and an 'AXES' section of access logs."""
    page = admin_client.get("/admin/").content.decode()
    assert "Django administration" not in page
    assert '<a href="/admin/">opsconsole</a>' in page
    assert "axes" not in page.lower()


def test_the_channel_form_labels_its_fields(admin_client):
    """Before: 'Url:' and 'Redacted: -'."""
    page = admin_client.get("/admin/alerts_app/channel/add/").content.decode()
    assert "Apprise URL" in page and "Default channel" in page
    assert "saved URL (secrets hidden)" in page.replace("Saved", "saved")
    assert ">Url:<" not in page and ">Redacted:<" not in page
