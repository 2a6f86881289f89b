"""Child process of test_tiling_serving: the front's v1/v2 hooks for tiling models, in-process.

Prints one JSON line with what the test checks (kserve's protos stay out of the test process).
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_tiling_serving import PointwiseSegmenter, _photo, _png, _spec  # noqa: E402

from fissure.models import build_model  # noqa: E402
from fissure.serving.front.model import InProcessModel  # noqa: E402
from fissure.serving.front.protocol import parse_v2_rest  # noqa: E402
from fissure.serving.runtime import ModelRuntime  # noqa: E402


async def call(runtime, name, v2: bool):
    front = InProcessModel(name, {"name": name, "version": "1"}, runtime.spec, runtime)
    b64 = base64.b64encode(_png(_photo())).decode()
    try:
        if v2:
            body = json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [b64]}]})
            payload = parse_v2_rest(body.encode(), {}, name)
        else:
            payload = {"instances": [{"b64": b64}]}
        work = await front.predict(await front.preprocess(payload))
        return front, await front.postprocess(work)
    finally:
        await front.close()


def main() -> None:
    seg = ModelRuntime(PointwiseSegmenter(), _spec("segment"))
    spec = _spec("classify")
    torch.manual_seed(0)
    clf = ModelRuntime(build_model(spec), spec)
    _, v1 = asyncio.run(call(seg, "crack-segmenter", v2=False))
    front, v2 = asyncio.run(call(clf, "crack-classifier", v2=True))
    outputs = {o.name: o for o in v2.outputs}
    print(json.dumps({
        "v1_size": v1["predictions"][0]["size"],
        "v1_tiles": v1["predictions"][0]["tiling"]["tiles"],
        "declared": sorted(o["name"] for o in front.get_output_types()),
        "outputs": sorted(outputs),
        "tile_grid": json.loads(outputs["tile_map"].data[0])["grid"],
    }))


if __name__ == "__main__":
    main()
