"""Settings of the one-file Django project in :mod:`tests.webapps.django_site`."""

from __future__ import annotations

import os

SECRET_KEY = "goalqueue-webapp-tests"
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "tests.webapps.django_site"
INSTALLED_APPS = ["goalqueue.integrations.django"]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
USE_TZ = True
# goalqueue's settings: the dict wins over the environment for the keys it sets.
GOALQUEUE = {"SPOOL_DIR": os.environ.get("WEBAPP_SPOOL_DIR")}
if "WEBAPP_NAMESPACE" in os.environ:
    GOALQUEUE["NAMESPACE"] = os.environ["WEBAPP_NAMESPACE"]
