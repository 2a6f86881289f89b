# Training targets (included by the Makefile). See docs/training.md.
.PHONY: pipeline bench-train bench-realdata bench-contrast

pipeline: venv ## run the DVC pipeline (prepare, train both models, evaluate): dvc repro
	dvc repro

bench-train: venv ## CPU images/s of both models (train step, inference) + wall time of the default dvc repro from scratch
	$(VENV)/bin/python training/bench_train.py --out reports/bench_train.md

bench-realdata: venv ## train on synthetic + shared real sets, report Dice/F1 on held-back real images, and the magnetic-tile defect classes (15 min on 2 quiet cores, 2026-12-03: cracks 11.7 + magnetic tile 3.5; training/bench_realdata.py --only one leg)
	$(VENV)/bin/python training/bench_realdata.py --out reports/bench_realdata.md

.PHONY: bench-promotion
bench-promotion: venv ## minutes from `fissure retrain` to a promoted champion (default data and canary policy, Locust traffic) -> docs/benchmarks.md
	$(VENV)/bin/python training/bench_promotion.py

bench-contrast: venv ## after bench-realdata: its segmenter on the held-back images with their contrast changed (training/bench_contrast.py)
	$(VENV)/bin/python training/bench_contrast.py --out reports/bench_contrast.md
