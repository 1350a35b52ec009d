# The two commands of the README. Both create .venv on a fresh machine.
VENV := .venv/bin
.PHONY: setup run test lint notebooks lab bench

setup:
	bash scripts/setup.sh

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

# Open the chapters in JupyterLab (installs the notebooks extra into .venv the first time).
lab: setup
	$(VENV)/python -m pip install -q -e ".[notebooks]"
	$(VENV)/jupyter lab notebooks/

# Re-execute every notebook in place (uses the real essays when DEEPSEEK_SCRATCH_DATA points at them).
notebooks:
	$(VENV)/python scripts/run_notebooks.py

bench:
	$(VENV)/python -m benchmarks.moe
	$(VENV)/python -m benchmarks.decode
	$(VENV)/python -m benchmarks.train
