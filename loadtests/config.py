"""What the load tests send, where, and how often: targets, image sizes, mixes and run modes.

Plain Python (no Locust import): the locustfile, the runner, the checker and the tests read it.
Targets come from flags of ``python -m loadtests.run`` (or make variables), which the runner
hands to Locust's process as the ``FISSURE_LOADTEST_*`` variables below.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from fissure.settings import LOOPBACK, PORTS

REPO = Path(__file__).resolve().parents[1]
LOCUSTFILE = Path(__file__).with_name("locustfile.py")
THRESHOLDS = Path(__file__).with_name("thresholds.yaml")

# --------------------------------------------------------------------------- targets
ENV_REST = "FISSURE_LOADTEST_REST"    # the KServe front, REST (v1 and v2)
ENV_GRPC = "FISSURE_LOADTEST_GRPC"    # the KServe front, gRPC (host:port)
ENV_API = "FISSURE_LOADTEST_API"      # the feedback API
ENV_TOKEN = "FISSURE_LOADTEST_TOKEN"  # API token(s) with the annotator role; commas: one per person, round robin
ENV_IMAGES = "FISSURE_LOADTEST_IMAGES"            # folder of prepared images (the runner sets it)
ENV_SIZES = "FISSURE_LOADTEST_SIZES"              # comma list of size names (default: all of SIZES)
ENV_SHIFT = "FISSURE_LOADTEST_SHIFT"              # image set: none (default) or dark (drift tests)
ENV_WRONG = "FISSURE_LOADTEST_WRONG_RATIO"        # share of "wrong" verdicts people give
ENV_MODELS = "FISSURE_LOADTEST_MODELS"            # comma list of served models (default: both)
ENV_PERSON_WAIT = "FISSURE_LOADTEST_PERSON_WAIT"  # "min,max" seconds people think (default PERSON_WAIT; tests)

DEFAULT_REST = f"http://{LOOPBACK}:{PORTS['inference_rest']}"
DEFAULT_GRPC = f"{LOOPBACK}:{PORTS['inference_grpc']}"
DEFAULT_API = f"http://{LOOPBACK}:{PORTS['api']}"

MODELS = ("crack-classifier", "crack-segmenter")


# --------------------------------------------------------------------------- images
@dataclass(frozen=True)
class Size:
    name: str
    width: int
    height: int
    weight: int   # share of requests using this size
    count: int    # distinct images prepared (distinct bytes: no cache anywhere can shortcut them)
    what: str

    @property
    def megapixels(self) -> float:
        return self.width * self.height / 1e6


# From a cropped patch to a full 12-megapixel phone photo; all 4:3, JPEG quality 90 with sensor
# grain so their byte sizes are those of real photos (about 0.25 byte a pixel). The 12 MP image
# (about 3 MB of JPEG, 4 MB as base64 in JSON) is inside the front's limits: FISSURE_MAX_IMAGE_PIXELS 40 MP,
# FISSURE_MAX_BODY_BYTES 64 MiB, FISSURE_MAX_REQUEST_PIXELS 80 MP (one image per request here),
# and the API's FISSURE_API_MAX_UPLOAD_BYTES 20 MiB; images.check_limits() asserts it.
SIZES = (
    Size("thumb", 320, 240, 15, 6, "a cropped patch or an app thumbnail (0.08 MP)"),
    Size("vga", 640, 480, 25, 6, "a small photo as messaging apps resend it (0.3 MP)"),
    Size("phone-1mp", 1280, 960, 25, 4, "a phone photo resized by the app before upload (1.2 MP)"),
    Size("phone-3mp", 2048, 1536, 25, 3, "a phone photo at reduced resolution (3.1 MP)"),
    Size("12mp", 4000, 3000, 10, 2, "a full-resolution 12-megapixel phone camera photo"),
)
SIZE_BY_NAME = {s.name: s for s in SIZES}
# Requests with 12 MP images are named "<scenario> 12MP": decoding and answering them takes far
# longer than the rest, so they get their own p95 budget instead of owning the mix's tail.
LARGE_SIZES = {"12mp"}
LARGE_SUFFIX = " 12MP"


def selected_sizes() -> list[Size]:
    names = [n.strip() for n in os.environ.get(ENV_SIZES, "").split(",") if n.strip()]
    unknown = [n for n in names if n not in SIZE_BY_NAME]
    if unknown:
        raise ValueError(f"{ENV_SIZES}: unknown sizes {unknown}; known: {list(SIZE_BY_NAME)}")
    return [SIZE_BY_NAME[n] for n in names] if names else list(SIZES)


# --------------------------------------------------------------------------- scenarios and mixes
# scenario -> (Locust user class, weight among users, prefix of its request names)
SCENARIOS = {
    "v1": ("RestV1User", 2, "rest-v1 "),
    "v2": ("RestV2User", 3, "rest-v2 "),
    "grpc": ("GrpcUser", 2, "grpc "),
    "api": ("ApiPersonUser", 3, "api "),
}
# Machine clients (an inspection app, a batch uploader) send an image every 0.5-2 s, three
# classifications for one segmentation; people through the API look at each answer for 2-6 s.
MACHINE_WAIT = (0.5, 2.0)
PERSON_WAIT = (2.0, 6.0)
MACHINE_MODEL_MIX = {"crack-classifier": 3, "crack-segmenter": 1}
PERSON_MODEL_MIX = {"crack-classifier": 7, "crack-segmenter": 3}
WRONG_RATIO = 0.2  # people say "wrong" to a fifth of the predictions they judge (at random)
JUDGE_EVERY = (1, 1, 1, 1, 0)  # and judge four visits in five (the fifth they only look at)
HISTORY_EVERY = (1, 0)  # and browse the history every other visit (the first one included)


def person_wait() -> tuple[float, float]:
    text = os.environ.get(ENV_PERSON_WAIT, "")
    if not text.strip():
        return PERSON_WAIT
    low, _, high = text.partition(",")
    return float(low), float(high or low)


def request_name(protocol: str, model: str, size: Size) -> str:
    return f"{protocol} {model}" + (LARGE_SUFFIX if size.name in LARGE_SIZES else "")


# --------------------------------------------------------------------------- run modes
@dataclass(frozen=True)
class Mode:
    users: int
    spawn_rate: float
    duration: str  # Locust's --run-time
    what: str


MODES = {
    "smoke": Mode(8, 8.0, "60s", "one minute, few users: fails on any error (CI, the stack's end-to-end test)"),
    "loadtest": Mode(20, 2.0, "3m", "three minutes at 20 users: failures and p95 budgets"),
    "soak": Mode(20, 2.0, "30m", "30 minutes at 20 users: also latency over time and memory growth"),
}


def env_or(name: str, default: str) -> str:
    return os.environ.get(name) or default
