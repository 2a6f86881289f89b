"""Load tests of the fissure stack with Locust (see loadtests/README.md).

Only :mod:`loadtests.locustfile` imports Locust, and it runs in Locust's own process
(``python -m locust``): gevent patches ssl and sockets at import, which must never happen in a
pytest or CLI process. Everything else here (images, checker, memory sampler, report, run) is
plain Python that can be imported anywhere.
"""
