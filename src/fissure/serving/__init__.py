"""Serving: the KServe protocol front over two model runtimes, TorchServe handlers, packaging.

:mod:`.serve` is what ``fissure serve`` runs; :mod:`.front` speaks KServe v1/v2 (REST and gRPC);
the models run in-process (:class:`.front.model.InProcessModel`) or in TorchServe workers
(:mod:`.torchserve` supervises TorchServe, :mod:`.backend` is the front's client to it,
:mod:`.handler` is the MARs' handler); both use :mod:`.runtime`. :mod:`.codec` holds the pure
encodings and the internal frame, :mod:`.package` the MARs, :mod:`.client` ``fissure predict``,
:mod:`.canary` a challenger version served beside the champion (the local canary).
docs/serving.md draws the request path.
"""
