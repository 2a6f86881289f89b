"""The KServe-protocol front: a kserve ModelServer speaking v1 and v2 (REST and gRPC).

* :mod:`.protocol`: v1/v2 bodies -> work items and back, and the request limits;
* :mod:`.model`: the kserve Models (``preprocess`` decodes, ``predict`` forwards to a runtime,
  ``postprocess`` shapes the answer): :class:`~.model.TorchServeModel` over TorchServe,
  :class:`~.model.InProcessModel` over the model runtime in this process;
* :mod:`.server`: the FastAPI app and gRPC servicer, error mapping, binding and draining.

Importing this package imports kserve once, without letting kserve's module-level argparse
read our command line (``fissure serve --help`` would print kserve's help otherwise).
"""

from __future__ import annotations

import sys


def _import_kserve():
    argv = sys.argv
    sys.argv = argv[:1]
    try:
        import kserve  # noqa: F401
        import kserve.model_server  # noqa: F401
    finally:
        sys.argv = argv
    return kserve


kserve = _import_kserve()
