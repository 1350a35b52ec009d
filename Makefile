# The two commands of the README. Both create .venv on a fresh machine.
VENV := .venv/bin
.PHONY: setup run test lint notebooks lab bench

# The pip set-up runs again only when pyproject.toml or scripts/setup.sh is newer than its stamp (or there is
# no .venv yet); `make setup FORCE=1` runs it anyway.
STAMP := .venv/.setup-done
LAB_STAMP := .venv/.lab-done

setup: $(STAMP)
ifdef FORCE
.PHONY: $(STAMP)
endif

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $@

# Main job: train on the default data (real essays when found, else the bundled sample), then sample.
# --overwrite: a second `make run` retrains into checkpoints/ (train.py refuses to replace a run silently).
run: setup
	$(VENV)/python train.py --overwrite
	$(VENV)/python inference.py --model_path checkpoints/best_model.pt --prompt "The best way to learn programming is" --max_new_tokens 100 --temperature 0.8 --top_k 40

# Whole test suite: lint, unit/equivalence/integration tests, every notebook under nbval.
test: setup
	$(VENV)/ruff check .
	$(VENV)/python -m pytest -q tests notebooks --nbval-lax --nbval-current-env

lint:
	$(VENV)/ruff check .

# Open the chapters in JupyterLab (installs the notebooks extra into .venv the first time). As root (containers,
# cloud VMs) --allow-root is added; LAB_ARGS passes anything else to jupyter lab, e.g. on a remote machine:
#   make lab LAB_ARGS="--no-browser --ip 0.0.0.0 --port 8888"
LAB_ARGS ?=
ROOT_ARGS := $(if $(filter 0,$(shell id -u)),--allow-root,)

lab: setup $(LAB_STAMP)
	$(VENV)/jupyter lab notebooks/ $(ROOT_ARGS) $(LAB_ARGS)

$(LAB_STAMP): pyproject.toml $(STAMP)
	$(VENV)/python -m pip install -q -e ".[notebooks]"
	touch $@

# Re-execute every notebook in place (uses the real essays when DEEPSEEK_SCRATCH_DATA points at them).
notebooks:
	$(VENV)/python scripts/run_notebooks.py

bench:
	$(VENV)/python -m benchmarks.moe
	$(VENV)/python -m benchmarks.decode
	$(VENV)/python -m benchmarks.train
