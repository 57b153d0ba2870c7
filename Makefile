# The README's commands. Everything runs inside .venv, created on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= data/shapes

.PHONY: setup demo test test-slow bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch/torchvision lie on this machine's disk; pyproject.toml only asks for ranges these satisfy.
	$(BIN)/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install --quiet -e '.[dev,serve]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/captioner data stats --dataset_type shapes --data_dir $(DEMO_DIR)
	$(BIN)/captioner train --dataset_type shapes --data_dir $(DEMO_DIR) --max_images 1000 --decoder attention \
		--epochs 6 --learning_rate 1e-3 --embedding_epochs 5 --output_dir runs --show_samples 8
	# the library: the first 100 test images indexed with the model just trained, then searched by description
	$(BIN)/captioner index $(DEMO_DIR)/Images/shapes_000*.png --library runs/demo_library \
		--model_path "$$(ls -td runs/*/ | grep -v demo_library | head -1)best.pt"
	$(BIN)/captioner search "a red circle" --library runs/demo_library --top_k 5

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The full fault sets (training and extraction killed at 10 moments each) and second runs: a few minutes more.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# Speed on this machine (needs ../shared/data/flickr8k); MODEL=runs/RUN/best.pt adds decoding and serving.
bench: $(STAMP)
	$(BIN)/python benchmarks/extract.py
	$(BIN)/python benchmarks/train_throughput.py
	@if [ -n "$(MODEL)" ]; then $(BIN)/python benchmarks/decode.py --model_path $(MODEL) && \
		$(BIN)/python benchmarks/serve_load.py --model_path $(MODEL); \
	else echo "MODEL=runs/RUN/best.pt also measures decoding and the web server"; fi

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
