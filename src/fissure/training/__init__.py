"""Training, evaluation and experiment tracking for the crack models.

- :mod:`fissure.training.config`   hyper-parameters (params.yaml sections)
- :mod:`fissure.training.datasets` torch datasets over loaders' item lists + augmentation
- :mod:`fissure.training.loop`     the seeded, early-stopped training loop
- :mod:`fissure.training.metrics`  classification and segmentation metrics by public name
- :mod:`fissure.training.tracking` MLflow experiments, lineage tags, registry aliases
- :mod:`fissure.training.evaluate` evaluation on any folder (``fissure evaluate``)
- :mod:`fissure.training.run`      ``fissure train`` end to end
"""
