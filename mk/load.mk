# Load tests with Locust (loadtests/, docs in loadtests/README.md). Included by the Makefile
# (-include mk/*.mk); VENV and STAMP come from there. Each target runs `python -m loadtests.run`
# headless against the local stack (`make up DETACH=1`) or the URLs given here, writes CSV, HTML,
# report.png and summary.md into .fissure/loadtests/<timestamp>-<mode>/ and fails with one line
# per threshold of loadtests/thresholds.yaml it breached.
#   make loadtest [LOADTEST_USERS=20] [LOADTEST_DURATION=3m]
#   make soak [SOAK_MINUTES=30]            latency over time and each stack process's memory
#   make loadtest-smoke                    one minute, few users, fails on any error
#   targets: LOADTEST_REST=http://... LOADTEST_GRPC=host:port LOADTEST_API=http://...
#   (default: the local stack on 127.0.0.1:8080/8081/8000); the API token: FISSURE_LOADTEST_TOKEN
#   (default on loopback: an annotator token made with `fissure token create`, cached)

.PHONY: loadtest soak loadtest-smoke

LOADTEST_REST ?=
LOADTEST_GRPC ?=
LOADTEST_API ?=
LOADTEST_USERS ?=
LOADTEST_DURATION ?=
LOADTEST_ARGS ?=
SOAK_MINUTES ?= 30

LOADTEST_TARGETS = $(if $(LOADTEST_REST),--rest $(LOADTEST_REST)) $(if $(LOADTEST_GRPC),--grpc $(LOADTEST_GRPC)) \
	$(if $(LOADTEST_API),--api $(LOADTEST_API)) $(if $(LOADTEST_USERS),--users $(LOADTEST_USERS))

loadtest: venv ## Locust against the local stack (or LOADTEST_REST/GRPC/API): failures and p95 budgets, reports in .fissure/loadtests/
	$(VENV)/bin/python -m loadtests.run $(LOADTEST_TARGETS) $(if $(LOADTEST_DURATION),--duration $(LOADTEST_DURATION)) $(LOADTEST_ARGS)

soak: venv ## Locust for SOAK_MINUTES (default 30): errors, latency over time, memory growth of each stack process
	$(VENV)/bin/python -m loadtests.run --soak --duration $(SOAK_MINUTES)m $(LOADTEST_TARGETS) $(LOADTEST_ARGS)

loadtest-smoke: venv ## one-minute Locust smoke against the stack: fails on any error
	$(VENV)/bin/python -m loadtests.run --smoke $(LOADTEST_TARGETS) $(if $(LOADTEST_DURATION),--duration $(LOADTEST_DURATION)) $(LOADTEST_ARGS)
