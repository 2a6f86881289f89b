"""TorchServe handler packed into every fissure MAR (both crack-classifier and crack-segmenter).

Thin on purpose: the logic is ``fissure.serving.handler.FissureHandler`` (decode with
``fissure.preprocess``, batch forward, postprocess), installed in the serving environment
(``install_py_dep_per_model=false``). TorchServe instantiates the one class defined here.
"""

from fissure.serving.handler import FissureHandler


class FissureTorchServeHandler(FissureHandler):
    """Entry point TorchServe finds in this module."""
