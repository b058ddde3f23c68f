"""What the tests share, one concept per module; ``tests/conftest.py`` builds its fixtures on these.

* :mod:`tests.helpers.databases`: which Redis and which databases on it the tests use;
* :mod:`tests.helpers.ports`: a free TCP port, and a Redis URL nothing answers on;
* :mod:`tests.helpers.redis_server`: ``redis-server`` processes of a test's own;
* :mod:`tests.helpers.waiting`: ``wait_for``, polling a condition instead of sleeping;
* :mod:`tests.helpers.settings`: quick settings (sub-second waits) and the sandbox's API key;
* :mod:`tests.helpers.workers`: real ``celery -A workers worker`` processes;
* :mod:`tests.helpers.messages`: taking a task message off the queue as kombu would;
* :mod:`tests.helpers.datafast`: DataFast's answers for an ``httpx.MockTransport``;
* :mod:`tests.helpers.spool`: reading the producer's spool behind its back.
"""
