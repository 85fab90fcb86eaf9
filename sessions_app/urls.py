from django.urls import path

from sessions_app import api, views

urlpatterns = [
    path("", views.live, name="live"),
    path("live/rows/", views.live_rows, name="live-rows"),
    path("history/", views.history, name="history"),
    path("history/export.csv", views.history_csv, name="history-csv"),
    path("costs/", views.costs, name="costs"),
    path(
        "sessions/<uuid:session_id>/transcript.jsonl",
        views.transcript_download,
        name="session-download",
    ),
    path("sessions/<uuid:session_id>/", views.session_page, name="session"),
    path("sessions/<uuid:session_id>/header/", views.session_header, name="session-header"),
    path(
        "sessions/<uuid:session_id>/kill-leftovers/",
        views.kill_leftovers_view,
        name="session-kill-leftovers",
    ),
    path(
        "sessions/<uuid:session_id>/transcript/",
        views.transcript_follow,
        name="session-transcript",
    ),
    # JSON API (paths kept from the seed)
    path("api/claude-active", api.claude_active, name="api-active"),
    path("api/claude-jsonl/<str:session_id>", api.transcript_tail, name="api-transcript"),
    path("api/sessions", api.session_list, name="api-sessions"),
    path("api/history/export.json", api.history_json, name="api-history-json"),
    path("api/sessions/<str:session_id>", api.session_detail, name="api-session"),
    path(
        "api/sessions/<str:session_id>/kill-leftovers",
        api.session_kill_leftovers,
        name="api-session-kill-leftovers",
    ),
]
