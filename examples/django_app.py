"""Django: track a ``signup`` goal once the signup's transaction commits (single-file app).

    pip install 'goalqueue[django]'
    GOALQUEUE_BROKER_URL=redis://localhost:6379/0 python examples/django_app.py runserver

In a real project the view goes in ``views.py`` and the settings in ``settings.py``:
``goalqueue.integrations.django`` in ``INSTALLED_APPS`` checks goalqueue's settings at start
(``manage.py check``), and the ``GOALQUEUE`` dict configures it (it wins over the environment).
"""

from __future__ import annotations

import sys

from django.conf import settings

if not settings.configured:
    settings.configure(
        DEBUG=True,
        SECRET_KEY="example-only",
        ROOT_URLCONF=__name__,
        ALLOWED_HOSTS=["localhost", "127.0.0.1", "testserver"],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        INSTALLED_APPS=["goalqueue.integrations.django"],
    )

import django

django.setup()

from django.db import transaction  # noqa: E402
from django.http import HttpRequest, HttpResponseBadRequest, JsonResponse  # noqa: E402
from django.urls import path  # noqa: E402
from django.views.decorators.csrf import csrf_exempt  # noqa: E402
from django.views.decorators.http import require_POST  # noqa: E402

from goalqueue.integrations.django import track_goal_from_request  # noqa: E402

PLANS = {"free", "pro"}


def create_user(email: str, plan: str) -> dict[str, str]:
    """Stand-in for ``User.objects.create_user``."""
    return {"email": email, "plan": plan}


@csrf_exempt  # an example API endpoint; keep CSRF protection in a real form view
@require_POST
@transaction.atomic
def signup(request: HttpRequest) -> JsonResponse | HttpResponseBadRequest:
    plan = request.POST.get("plan", "free")
    if plan not in PLANS:
        return HttpResponseBadRequest("unknown plan")
    user = create_user(request.POST["email"], plan)
    # Enqueued when the transaction commits; if it rolls back, no goal is sent.
    event_id = track_goal_from_request(request, "signup", metadata={"plan": plan})
    return JsonResponse({"user": user, "goal": event_id}, status=201)


urlpatterns = [path("signup", signup)]

if __name__ == "__main__":
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
