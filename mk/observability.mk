# Observability: the local Prometheus and the rules. Included by the Makefile (-include mk/*.mk).
#   make prometheus    make sure Prometheus and promtool are there (Debian's prometheus package,
#                      installed with apt-get when root); `make up` runs Prometheus when present
#   make rules-check   promtool check rules + promtool test rules (tests/observability/rules/)
#
# The rules live in the chart (charts/fissure/files/prometheus/rules.yaml): the PrometheusRule
# ships them and the local Prometheus of `fissure up` loads the same file.

PROMETHEUS_RULES := charts/fissure/files/prometheus/rules.yaml
PROMETHEUS_RULE_TESTS := $(sort $(wildcard tests/observability/rules/*.yaml))
PROMTOOL ?= $(shell command -v promtool 2>/dev/null || echo /usr/bin/promtool)

.PHONY: prometheus rules-check prometheus-if-root

prometheus: ## make sure Prometheus and promtool are installed (Debian's prometheus with apt-get when root)
	@if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 \
	  || { test -x /usr/bin/prometheus && test -x /usr/bin/promtool; }; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo ">> installing Prometheus and promtool (Debian's prometheus)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; \
	else \
		echo "Prometheus and promtool are needed: apt-get install prometheus (or your system's package)" >&2; exit 1; \
	fi

rules-check: prometheus ## promtool check rules + promtool test rules (a unit test for every alert)
	$(PROMTOOL) check rules $(PROMETHEUS_RULES)
	$(PROMTOOL) test rules $(PROMETHEUS_RULE_TESTS)

# `make up` runs Prometheus when it is there: installed first where that is possible (root with
# apt-get), otherwise `fissure up` says how and starts the stack without it.
prometheus-if-root:
	@if ! command -v prometheus >/dev/null 2>&1 && ! test -x /usr/bin/prometheus \
	  && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then $(MAKE) --no-print-directory prometheus; fi

up: prometheus-if-root

# `make test` runs the rules' promtool tests and a real Prometheus (tests/observability/).
test: prometheus
