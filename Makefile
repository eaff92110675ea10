# Kubeloop — every workflow is a make target. `make help` lists them.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

UV ?= $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
UV_VERSION ?= 0.13.8
export KUBELOOP_CACHE ?= $(HOME)/.cache/kubeloop
PYTEST_ARGS ?=

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}'

.PHONY: uv
uv:
	@command -v $(UV) >/dev/null 2>&1 || python3 -m pip install --user --quiet "uv==$(UV_VERSION)"

.PHONY: setup
setup: uv ## Install uv (if missing) and every dependency of the workspace (idempotent)
	@$(UV) sync --all-packages --frozen

.PHONY: test
test: setup ## Run the whole test suite (lint, unit, packaging, component, harness, e2e on the local cluster); PYTEST_ARGS='-m "not harness"' leaves out the harness's own tests
	@bash hack/run-tests.sh $(PYTEST_ARGS)

.PHONY: lint
lint: setup ## ruff, mypy --strict on every package (core, trainer, server, operator, api, hack, test support), import contracts
	@$(UV) run --frozen ruff check .
	@$(UV) run --frozen ruff format --check .
	@$(UV) run --frozen mypy
	@$(UV) run --frozen lint-imports

.PHONY: crds
crds: setup ## Regenerate crds/*.yaml from the resource models
	@$(UV) run --frozen python -m kubeloop.crdgen

.PHONY: demo
demo: setup ## Set up everything and run the main job locally: train (MLflow, ONNX, baseline in MinIO), serve, predict, check drift
	@$(UV) run --frozen python hack/demo.py $(DEMO_ARGS)

# ---------------------------------------------------------------- local cluster (hack/localcluster)
.PHONY: cluster-up
cluster-up: setup ## Start etcd, kube-apiserver, kube-controller-manager, MinIO and MLflow on 127.0.0.1 (builds pinned binaries once), the node agent, then Kubeloop (CRDs, RBAC, Secret, dataset, operator)
	@$(UV) run --frozen python hack/cluster.py up
	@cd hack && $(UV) run --frozen python -m nodeagent up
	@cd hack && $(UV) run --frozen python -m localcluster.platform up

.PHONY: cluster-down
cluster-down: ## Stop everything cluster-up (or a test session) started; fails if any process is left
	@rc=0; (cd hack && $(UV) run --frozen python -m localcluster.platform down) || rc=$$?; \
	(cd hack && $(UV) run --frozen python -m nodeagent down) || rc=$$?; \
	$(UV) run --frozen python hack/cluster.py down || rc=$$?; exit $$rc

.PHONY: cluster-status
cluster-status: ## Show each local component (pid, address, health) and how to use them
	@$(UV) run --frozen python hack/cluster.py status
	@cd hack && $(UV) run --frozen python -m nodeagent status || true

.PHONY: kind-up
kind-up: setup ## Create a kind cluster (needs Docker) for KUBELOOP_TEST_KUBECONFIG
	@$(UV) run --frozen python hack/cluster.py kind-up

.PHONY: bench-server
bench-server: setup ## Inference server vs MLServer, a raw-ASGI floor on our uvicorn settings and a FastAPI no-op; every answer checked (loopback, bounded)
	@UV=$(UV) bash bench/server/mlserver-env.sh
	@bash bench/server/install-wrk.sh || echo "wrk not installable here: using the Python load generator"
	@timeout 1200 $(UV) run --frozen python bench/server/bench.py --mlserver-python bench/.envs/mlserver/bin/python $(BENCH_ARGS)

.PHONY: bench-drift
bench-drift: uv ## Drift check vs Evidently DataDriftPreset, 100k rows x 50 features, with and without our baseline build, same repetitions (own env in bench/.envs)
	@UV=$(UV) bash bench/drift/run.sh

.PHONY: bench-trainer
bench-trainer: setup ## Trainer loop vs a plain torch loop with the same fused AdamW, samples/s, plus measured validation/checkpoint costs (RESULT trainer_vs_plain_torch=…)
	@$(UV) run --frozen python bench/trainer/bench_trainer.py

.PHONY: bench-trainer-gpu
bench-trainer-gpu: setup ## DeepSpeed ZeRO-1 bf16 step time vs a plain torch bf16 loop on one CUDA GPU (last line: RESULT ds_vs_plain_example=…)
	@$(UV) run --frozen python bench/trainer/bench_gpu.py $(BENCH_ARGS)

.PHONY: bench-operator
bench-operator: setup ## Operator under load on the local cluster: 500 TrainingJobs, steady 5/s latencies, RSS 500 vs 10 (last line: RESULT operator_crs_per_s=…)
	@timeout 2400 $(UV) run --frozen python bench/operator/bench_operator.py $(BENCH_ARGS)

.PHONY: e2e-operator-chaos
e2e-operator-chaos: setup ## Crash safety in full: kill -9 the operator at random, 20 rounds over 50 TrainingJobs (the suite runs 3 over 10)
	@KUBELOOP_E2E_CHAOS_ROUNDS=20 KUBELOOP_E2E_CHAOS_TJS=50 $(UV) run --frozen pytest tests/e2e/test_operator_robustness.py -k kill_9 -s $(PYTEST_ARGS)

.PHONY: e2e-operator-idle
e2e-operator-idle: setup ## Idle writes in full: 50 converged TrainingJobs, 2 minutes of audit log (the suite runs 10 for 30 s)
	@KUBELOOP_E2E_IDLE_TJS=50 KUBELOOP_E2E_IDLE_SECONDS=120 $(UV) run --frozen pytest tests/e2e/test_operator_robustness.py -k idle -s $(PYTEST_ARGS)

.PHONY: e2e-modeldeployment-robustness
e2e-modeldeployment-robustness: setup ## ModelDeployments in the mix, in full: kill -9 at random, 20 rounds over 40 ModelDeployments + 10 TrainingJobs, then 2 minutes of idle audit log (the suite runs 3 rounds over 8 + 4, 20 s)
	@KUBELOOP_E2E_MD_CHAOS_ROUNDS=20 KUBELOOP_E2E_MD_CHAOS_MDS=40 KUBELOOP_E2E_MD_CHAOS_TJS=10 KUBELOOP_E2E_MD_IDLE_SECONDS=120 $(UV) run --frozen pytest tests/e2e/test_modeldeployment_robustness.py -s $(PYTEST_ARGS)

.PHONY: bench-drift-check
bench-drift-check: setup ## Drift check over 1,000,000 logged rows x 30 features in 100 Parquet parts in MinIO vs reading the same parts with pyarrow alone, peak RSS (last line: RESULT driftcheck_vs_read=…)
	@timeout 1800 $(UV) run --frozen python bench/driftcheck/bench_driftcheck.py $(BENCH_ARGS)

.PHONY: e2e-drift-guards
e2e-drift-guards: setup ## DriftMonitor retraining guards in full: cooldown, maxPerDay, no overlap waited out, 5 random kill -9 rounds (the suite runs 1)
	@KUBELOOP_E2E_DRIFT_FULL=1 $(UV) run --frozen pytest tests/e2e/test_driftmonitor_guards.py -s $(PYTEST_ARGS)

.PHONY: bench-api
bench-api: setup ## REST facade under load: 200 SSE clients + create/list mix for 60 s, list p99 vs the API server's (last line: RESULT api_list_p99_ms=…)
	@timeout 900 $(UV) run --frozen python bench/api/bench_api.py $(BENCH_ARGS)

.PHONY: fuzz-api
fuzz-api: setup ## schemathesis against the REST facade's live OpenAPI document, ~4,000 cases, no 5xx allowed (the suite runs ~600, time-capped)
	@KUBELOOP_API_FUZZ_EXAMPLES=$${KUBELOOP_API_FUZZ_EXAMPLES:-40} KUBELOOP_API_FUZZ_SECONDS=0 $(UV) run --frozen pytest api/tests/test_component_fuzz.py -s $(PYTEST_ARGS)
