"""What the stack tells Prometheus, and what is built on it.

- :mod:`fissure.observability.catalog`     every fissure metric: name, type, labels, buckets (one place)
- :mod:`fissure.observability.serving`     the front's instruments: requests, latency, batches, model behaviour
- :mod:`fissure.observability.drift`       input statistics, the reference profile saved with a model, PSI
- :mod:`fissure.observability.prometheus`  the local Prometheus: targets, generated config, rules
- :mod:`fissure.observability.pictures`    dashboards drawn with matplotlib from a real Prometheus
"""
