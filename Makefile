# Two commands work on a fresh machine (they create .venv and install everything):
#   make train   the main job: train the default model on the embedded digits data
#   make test    the fast test suite (torch and torchvision are installed as references)
# `make test-slow` runs the tests marked slow (the largest architectures, the long
# journeys); CI runs both. `make test-all` runs everything in one go.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch/torchvision used as the tests' references; override for another platform.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: setup train demo course test test-slow test-all bench lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PINS)
	$(BIN)/pip install -q -e '.[torch,test]'
	$(BIN)/pip install -q --no-deps torch-lucent==0.1.8
	touch $@

setup: $(VENV)/.installed

train: setup
	$(BIN)/python train.py

demo: setup
	$(BIN)/resnet-jax summary my_resnet
	mkdir -p outputs
	$(BIN)/python -c "import torch, torchvision; torch.manual_seed(0); \
	  torch.save(torchvision.models.resnet18().state_dict(), 'outputs/resnet18_random.pth')"
	$(BIN)/python convert_weights.py --weights outputs/resnet18_random.pth \
	  --out outputs/resnet18 --verify --overwrite

# The course's nine notebooks (course/*.py), full settings; COURSE_FLAGS=--fast for the
# quick run the tests make. The gallery in docs/course.md was made with
#   resnet-jax course --out outputs/course --gallery docs/course
course: setup
	$(BIN)/resnet-jax course --out outputs/course $(COURSE_FLAGS)

test: setup
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup

test-slow: setup
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup -m slow

test-all: setup
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup -m ''

bench: setup
	$(BIN)/python -m benchmarks.run

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) outputs runs .pytest_cache
