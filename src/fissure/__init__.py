"""fissure: train, serve, watch and improve surface-crack detection models."""

__version__ = "0.1.0"

# Registered model names, by task. Stable: the registry, the chart and users rely on them.
MODEL_NAMES = {"classify": "crack-classifier", "segment": "crack-segmenter"}
TASKS = tuple(MODEL_NAMES)
