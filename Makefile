# Entry points used by the README quickstart and by .ci/run.
VENV ?= .venv
export ECONLM_DATA ?= $(abspath ../shared/data/arxiv-econ)
export HF_HUB_OFFLINE = 1

.PHONY: install install-vllm install-ci quickstart test

install:
	VENV=$(VENV) scripts/install.sh

# econlm plus vLLM in its own virtualenv, $(VENV)-vllm (`econlm serve --engine vllm`).
install-vllm:
	VENV=$(VENV) WITH_VLLM=1 scripts/install.sh

# CI runs everything, the browser test and the vLLM end-to-end test included.
install-ci:
	VENV=$(VENV) WITH_BROWSER=1 WITH_VLLM=1 scripts/install.sh

# The main job on the shipped defaults: the study in miniature (seeded test subsets, the shipped
# adapter and classifier, every baseline) -> out/reproduce-quick/report/report.md. 7-15 minutes on 2 cores.
quickstart: install
	$(VENV)/bin/econlm data validate $(ECONLM_DATA)/train.jsonl $(ECONLM_DATA)/validation.jsonl $(ECONLM_DATA)/test.jsonl
	$(VENV)/bin/econlm reproduce --preset quick --out out/reproduce-quick

test: install-ci
	$(VENV)/bin/python -m pytest -q
