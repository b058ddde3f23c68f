"""The Flask app on eventlet's own WSGI server, monkey-patched (gunicorn 23 dropped its eventlet
worker): ``python -m tests.webapps.eventlet_serve PORT``."""

from __future__ import annotations

import eventlet

eventlet.monkey_patch()

import sys  # noqa: E402

from eventlet import wsgi  # noqa: E402

from tests.webapps.flask_site import app  # noqa: E402

if __name__ == "__main__":
    wsgi.server(eventlet.listen(("127.0.0.1", int(sys.argv[1]))), app, log_output=False)
