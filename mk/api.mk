# The feedback API's tests run the store against a real PostgreSQL server (tests/api/conftest.py
# starts a throwaway cluster with Debian's initdb/pg_ctl under /usr/lib/postgresql/<major>/bin,
# as the postgres user when run as root). Included by the Makefile (-include mk/*.mk).
#   make postgres        make sure those binaries are there (installs postgresql with apt-get when root)

.PHONY: postgres

postgres: ## make sure PostgreSQL's server binaries are there for the API's store tests (apt-get when root)
	@if ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo ">> installing PostgreSQL for the API's store tests (Debian's postgresql)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql; \
	else \
		echo "the API's store tests need PostgreSQL's server: apt-get install postgresql (or your system's package)" >&2; exit 1; \
	fi

# `make test` gets PostgreSQL too (a prerequisite added here, beside the Makefile's venv and java)
test: postgres
