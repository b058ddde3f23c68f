"""A one-file Django project: ``gunicorn tests.webapps.django_site:application``.

The goal is tracked inside ``transaction.atomic`` and enqueued when the signup commits; goalqueue
is an installed app, configured from the ``GOALQUEUE`` dict (here filled from the environment).
"""

from __future__ import annotations

import os

from django.conf import settings

settings.configure(
    SECRET_KEY="goalqueue-webapp-tests",
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=["goalqueue.integrations.django"],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
    GOALQUEUE={"SPOOL_DIR": os.environ.get("WEBAPP_SPOOL_DIR")},
    USE_TZ=True,
)

from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.db import transaction  # noqa: E402
from django.http import HttpRequest, JsonResponse  # noqa: E402
from django.urls import path  # noqa: E402
from django.views.decorators.csrf import csrf_exempt  # noqa: E402

from goalqueue.integrations.django import track_goal_from_request  # noqa: E402

application = get_wsgi_application()


@csrf_exempt
@transaction.atomic
def signup(request: HttpRequest) -> JsonResponse:
    event_id = track_goal_from_request(request, "signup", metadata={"plan": "pro"})
    return JsonResponse({"goal": event_id}, status=201)


urlpatterns = [path("signup", signup)]
