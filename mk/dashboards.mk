# Grafana dashboards as code (dashboards/, grafana-foundation-sdk) and their pictures. Included by
# the Makefile (-include mk/*.mk); VENV comes from there. See dashboards/README.md.
#   make dashboards          regenerate charts/fissure/files/dashboards/*.json from dashboards/ (commit them)
#   make dashboards-check    fail when the committed JSON is not what dashboards/ builds
#   make dashboard-pictures  draw each dashboard from a running Prometheus into docs/img/dashboards/
#                            PICTURES_PROMETHEUS=http://localhost:9090 PICTURES_WINDOW=30m (and PICTURES_ARGS, e.g. --var model=x)

PICTURES_PROMETHEUS ?= http://localhost:9090
PICTURES_WINDOW ?= 30m
PICTURES_ARGS ?=

.PHONY: dashboards dashboards-check dashboard-pictures

dashboards: venv ## regenerate the Grafana dashboards' JSON (charts/fissure/files/dashboards) from dashboards/
	$(VENV)/bin/python -m dashboards

dashboards-check: venv ## fail when the committed dashboard JSON differs from what dashboards/ builds
	$(VENV)/bin/python -m dashboards --check

dashboard-pictures: venv ## draw every dashboard from Prometheus (PICTURES_PROMETHEUS=, PICTURES_WINDOW=) into docs/img/dashboards
	$(VENV)/bin/python -m fissure.observability.pictures --prometheus $(PICTURES_PROMETHEUS) --window $(PICTURES_WINDOW) \
		--out docs/img/dashboards $(PICTURES_ARGS)
