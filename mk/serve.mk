# Serving: the local stack (MLflow + the models behind the KServe protocol front).
# Included by the Makefile (-include mk/*.mk); VENV, STAMP and PATH come from there.
#   make up [DETACH=1] [HOST=0.0.0.0] [RUNTIME=torchserve]
#                        train if needed (dvc repro), package both champions, serve them
#                        (loopback unless HOST is given; the in-process runtime unless RUNTIME=torchserve)
#   make down            stop a detached stack

.PHONY: up down java

java: ## make sure Java 17 is there for TorchServe (installs it with apt-get when root)
	@if command -v java >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo ">> installing Java 17 for TorchServe (openjdk-17-jre-headless)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openjdk-17-jre-headless; \
	else \
		echo "TorchServe needs Java 17: apt-get install openjdk-17-jre-headless (or brew install openjdk@17), then run make up again" >&2; exit 1; \
	fi

up: venv $(if $(filter torchserve,$(RUNTIME)),java) ## start the local stack: trains if needed, then serves both models (DETACH=1 background, HOST=, RUNTIME=)
	$(VENV)/bin/fissure up $(if $(DETACH),--detach) $(if $(HOST),--host $(HOST)) $(if $(RUNTIME),--runtime $(RUNTIME))

down: venv ## stop the local stack started with make up DETACH=1
	$(VENV)/bin/fissure down

.PHONY: bench-serve
BENCH_ARGS ?=
bench-serve: venv ## serving benchmark (raw torch, fissure REST+gRPC, kserve, mlflow serve, FastAPI) -> docs/benchmarks.md
	$(VENV)/bin/python serving/bench/bench_serve.py --write docs/benchmarks.md $(BENCH_ARGS)

.PHONY: bench-native
bench-native: venv ## native-resolution cost: resized vs tiled, seconds per image and per megapixel on 2 threads -> docs/benchmarks.md
	$(VENV)/bin/python serving/bench/bench_native.py --write docs/benchmarks.md $(BENCH_ARGS)
