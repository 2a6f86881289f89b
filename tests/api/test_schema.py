"""Schemathesis against the API's own OpenAPI spec: generated requests, valid and not (no token,
a wrong token, bad parameters and bodies), with an admin token where a valid request needs one,
on a store with a few predictions and feedback and the live serving front of test_predict_live
(so generated images really go through /predict). No 500s, and every answer matches the spec
(status, content type, headers, body schema). Bounded: a few examples per operation."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig

from fissure.api.app import create_app
from fissure.api.auth import create_token
from fissure.api.store import Store
from fissure.settings import Settings

pytestmark = pytest.mark.slow

# The app exists before collection (schemathesis makes one test per operation from its spec), on a
# temp folder of its own, removed when the session ends (even if no test here ran); the serving URL
# is set before its first request.
HOME = Path(tempfile.mkdtemp(prefix="fissure-schema-"))
atexit.register(shutil.rmtree, HOME, ignore_errors=True)
CFG = Settings(home=HOME / "home", database_url=f"sqlite:///{HOME / 'api.db'}", blob_url=str(HOME / "blobs"),
               api_rate_limit=1_000_000, retrain_command="true")
STORE = Store(CFG.database_url, CFG.blob_url)
STORE.migrate()
ADMIN = create_token(STORE, "admin", "fuzzer")[0]
schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(CFG, STORE), config=SchemathesisConfig.from_dict({
    "auth": {"openapi": {"HTTPBearer": {"bearer": ADMIN}}},
    # An upload's bytes are "binary" to the spec: schema-valid bytes that are no image get the
    # contract's 415, which this check must accept (the defaults plus 415).
    "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "3xx", 401, 403, 404, 409, 415, 429,
                                                                  "5xx"]}},
}))


@pytest.fixture(scope="module", autouse=True)
def _stack(serving, make_prediction):
    CFG.inference_url = serving["url"]
    for seed in range(3):
        p = make_prediction(STORE, task="segment" if seed == 2 else "classify", seed=seed)
        STORE.put_feedback(p.id, "someone", "correct")
    yield
    from schemathesis.python.asgi import shutdown_lifespans

    shutdown_lifespans()
    STORE.close()


@schema.parametrize()
@settings(max_examples=12, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_api_matches_its_openapi_spec(case):
    case.call_and_validate()
