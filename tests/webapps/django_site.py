"""A Django project's view and URLs, and its WSGI application:
``gunicorn tests.webapps.django_site:application`` (settings: :mod:`tests.webapps.django_settings`).

The goal is tracked inside ``transaction.atomic`` and enqueued when the signup commits.
"""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.webapps.django_settings")

from django.core.wsgi import get_wsgi_application
from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from goalqueue.integrations.django import track_goal_from_request

application = get_wsgi_application()


@csrf_exempt
@transaction.atomic
def signup(request: HttpRequest) -> JsonResponse:
    event_id = track_goal_from_request(request, "signup", metadata={"plan": "pro"})
    return JsonResponse({"goal": event_id}, status=201)


urlpatterns = [path("signup", signup)]
