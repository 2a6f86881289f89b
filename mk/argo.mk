# Argo Workflows: argo/fissure_workflows.py (hera) is the source; `make workflows` exports it to
# argo/*.yaml (plain, for a release named fissure) and charts/fissure/files/argo/*.yaml (the
# chart's copy, rendered by templates/argo-workflows.yaml). tests/argo checks both are in sync.
# Needs hera in .venv (the dev extra: `make venv`).

.PHONY: workflows workflows-check

workflows: ## regenerate argo/*.yaml and charts/fissure/files/argo/ from argo/fissure_workflows.py (hera)
	@$(VENV)/bin/python argo/fissure_workflows.py

workflows-check: ## fail when the committed workflow YAML differs from argo/fissure_workflows.py
	@$(VENV)/bin/python argo/fissure_workflows.py --check
