"""Web framework integrations: track a goal for the visitor behind the current request.

Each module imports its framework, so install the matching extra first:

* :mod:`goalqueue.integrations.flask` (``pip install 'goalqueue[flask]'``)
* :mod:`goalqueue.integrations.django` (``pip install 'goalqueue[django]'``): enqueues on commit
* :mod:`goalqueue.integrations.fastapi` (``pip install 'goalqueue[fastapi]'``): a dependency

The framework-neutral helpers they share live in :mod:`goalqueue.web`.
"""
