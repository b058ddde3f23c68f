"""Small web apps, one per framework, served for real (gunicorn, uvicorn) by the web-edge tests:
each answers ``POST /signup`` with 201 and the signup goal's event id, tracked through its
framework's goalqueue integration. Configured by the environment, as a deployed app is."""
