"""Serving: TorchServe handlers, the KServe protocol front, packaging and the local stack.

Layout of the request path::

    client --REST 8080 / gRPC 8081--> kserve.ModelServer front (fissure.serving.front: decode, resize)
           --aiohttp keep-alive (fissure.serving.backend), internal wire format--> TorchServe 127.0.0.1:8083
           --> handler (serving/handlers/fissure_handler.py -> fissure.serving.handler)
           --> fissure.serving.runtime (normalise or decode, batch forward, postprocess)

Pure helpers (RLE, boxes, PNG, the wire format) live in :mod:`fissure.serving.codec`.
"""
