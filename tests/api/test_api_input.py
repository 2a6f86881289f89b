"""A client's malformed input is a one-line 400/403/413 that says what is wrong, never a 500:
NUL bytes (which PostgreSQL refuses), contradictory feedback, bodies that are not JSON or not a
whole form, image and mask errors that name what is accepted, HEAD requests, and role messages."""

from __future__ import annotations

import pytest

from fissure.api.auth import create_token

NUL_URLS = ["/predictions/%00", "/predictions/a%00b/image", "/feedback/%00/mask", "/retrain/%00",
            "/predictions?model=%00", "/predictions?version=a%00", "/review-queue?model=%00",
            "/pipeline/events?model=%00", "/nope%00"]


# ---------------------------------------------------------------------------- NUL bytes

@pytest.mark.parametrize("url", NUL_URLS)
def test_a_nul_byte_in_the_url_is_400_on_both_databases(make_client, db_url, url):
    c = make_client(database_url=db_url)
    r = c.get(url, role="admin")
    assert r.status_code == 400, r.text
    assert list(r.json()) == ["error"] and "NUL" in r.json()["error"], r.text


def test_an_encoded_percent_is_not_a_nul(client):
    assert client.get("/predictions?model=%2500").status_code == 200  # the text "%00"


def test_the_spec_says_which_text_holds_no_nul(client):
    """So a client generated from it (or schemathesis) does not send what is refused."""
    spec = client.get("/openapi.json", role=None).json()
    params = {p["name"]: p["schema"] for p in spec["paths"]["/predictions"]["get"]["parameters"]}
    no_nul = "^[^\\x00]*$"
    assert params["model"]["anyOf"][0]["pattern"] == no_nul and params["version"]["anyOf"][0]["pattern"] == no_nul
    assert "pattern" not in params["since"]["anyOf"][0]  # a date-time: its format says enough
    assert spec["paths"]["/retrain/{run_id}"]["get"]["parameters"][0]["schema"]["pattern"] == no_nul
    form = spec["paths"]["/predictions/{prediction_id}/feedback"]["post"]["requestBody"]["content"][
        "multipart/form-data"]["schema"]["properties"]
    assert form["note"]["pattern"] == form["label"]["pattern"] == no_nul
    assert spec["components"]["schemas"]["TokenIn"]["properties"]["name"]["anyOf"][0]["pattern"] == no_nul


def test_a_nul_byte_in_a_token_name_or_a_feedback_field_is_400_on_both_databases(make_client, db_url,
                                                                                 make_prediction):
    c = make_client(database_url=db_url)
    r = c.post("/tokens", role="admin", json={"role": "viewer", "name": "a\u0000b"})
    assert r.status_code == 400 and r.json() == {"error": "name: must not contain a NUL byte"}, r.text
    p = make_prediction(c.store)
    url = f"/predictions/{p.id}/feedback"
    for data in ({"verdict": "correct", "note": "a\x00b"}, {"verdict": "wrong", "label": "no_crack\x00"}):
        for send in ({"data": data}, {"data": data, "files": {"x": ("x.txt", b"x", "text/plain")}}):
            r = c.post(url, role="annotator", **send)  # urlencoded, then multipart
            assert r.status_code == 400, r.text
            assert "NUL" in r.json()["error"] and repr(next(k for k in data if k != "verdict")) in r.json()["error"]
    assert c.get(f"/predictions/{p.id}").json()["feedback"] == []
    r = c.post(url, role="annotator", data={"verdict": "correct", "note": "fine"})
    assert r.status_code == 200, r.text


# ---------------------------------------------------------------------------- contradictory feedback

def test_feedback_that_contradicts_itself_is_400(client, make_prediction):
    p = make_prediction(client.store, p_crack=0.9)  # predicted: crack
    url = f"/predictions/{p.id}/feedback"
    r = client.post(url, role="annotator", data={"verdict": "correct", "label": "no_crack"})
    assert r.status_code == 400 and "'crack'" in r.json()["error"] and "wrong" in r.json()["error"], r.text
    r = client.post(url, role="annotator", data={"verdict": "wrong", "label": "crack"})
    assert r.status_code == 400 and "the predicted label" in r.json()["error"], r.text
    assert client.get(f"/predictions/{p.id}").json()["feedback"] == []
    # consistent ones are taken
    assert client.post(url, role="annotator", data={"verdict": "correct", "label": "crack"}).status_code == 200
    r = client.post(url, role="annotator", data={"verdict": "wrong", "label": "no_crack"})
    assert r.status_code == 200 and r.json()["label"] == "no_crack", r.text


# ---------------------------------------------------------------------------- bodies

@pytest.mark.parametrize("path,role,body,at", [("/tokens", "admin", b"{bad", 1),
                                               ("/pipeline/events", "admin", b"not json", 0)])
def test_a_body_that_is_not_json_says_so(client, path, role, body, at):
    r = client.post(path, role=role, content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error.startswith("request body is not valid JSON") and error.endswith(f"(at character {at})"), error


MULTIPART = {"Content-Type": "multipart/form-data; boundary=xx"}
FILE_PART = b'--xx\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n'


def test_a_truncated_multipart_body_is_400_saying_so(client, images):
    r = client.post("/predict", content=FILE_PART + images.png(), headers=MULTIPART)  # no closing boundary
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "malformed multipart body: truncated, it ends before its closing boundary '--xx--'"
    # the whole body reads (it reaches the serving front, which is down here: 503)
    r = client.post("/predict", content=FILE_PART + images.png() + b"\r\n--xx--\r\n", headers=MULTIPART)
    assert r.status_code == 503, r.text


def test_a_garbled_multipart_body_is_400_and_leaves_no_parser_warning(client, caplog):
    r = client.post("/predict", content=b"garbage\r\n\x00\xff", headers=MULTIPART)
    assert r.status_code == 400 and r.json()["error"].startswith("malformed multipart body: "), r.text
    assert not [rec for rec in caplog.records if rec.name.startswith("python_multipart")]


def test_the_413_message_says_what_the_limit_is_made_of(make_client):
    c = make_client(api_max_upload_bytes=100_000)
    r = c.post("/predict", files={"file": ("a.png", b"x" * 2_000_000, "image/png")})
    assert r.status_code == 413, r.text
    limit = 100_000 + 1024 * 1024
    assert r.json()["error"].endswith(
        f"over the {limit}-byte limit (FISSURE_API_MAX_UPLOAD_BYTES=100000 for a file, "
        "plus 1 MiB for the rest of the body)"), r.text


# ---------------------------------------------------------------------------- images and masks

@pytest.mark.parametrize("data,status,start", [(b"abcdef", 415, "not an image: could not decode 6 bytes as "),
                                               (b"", 400, "empty image: ")])
def test_image_errors_name_every_accepted_format(client, data, status, start):
    r = client.post("/predict", files={"file": ("a.png", data, "image/png")})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error.startswith(start) and "JPEG, PNG, BMP, TIFF or WebP" in error, error


def test_an_unreadable_mask_names_no_python_internals(client, make_prediction, images):
    seg = make_prediction(client.store, task="segment", w=48, h=32)
    for data in (b"\x89PNG\r\n\x1a\nbroken", images.mask(48, 32)[:60]):
        r = client.post(f"/predictions/{seg.id}/feedback", role="annotator", data={"verdict": "wrong"},
                        files={"mask": ("m.png", data, "image/png")})
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error.startswith("unreadable mask: ") and "<" not in error and " at 0x" not in error, error


# ---------------------------------------------------------------------------- HEAD

@pytest.mark.parametrize("path,role", [("/ping", None), ("/", None), ("/history", None), ("/review", None),
                                       ("/metrics", None), ("/predictions", "viewer"), ("/predictions", None)])
def test_head_is_get_without_the_body(client, path, role):
    got, head = client.get(path, role=role), client.http.head(path, headers=client.as_(role))
    assert head.status_code == got.status_code, head.text
    assert head.content == b""
    assert head.headers["content-type"] == got.headers["content-type"]
    if path != "/metrics":  # the counters move between the two
        assert head.headers["content-length"] == got.headers["content-length"]


def test_head_on_a_post_only_route_is_still_405(client):
    r = client.http.head("/retrain")
    assert r.status_code == 405 and r.headers["allow"] == "POST"


def test_head_is_counted_as_head(client):
    client.http.head("/ping")
    assert 'fissure_api_requests_total{method="HEAD",route="/ping",status="200"} 1.0' in client.get(
        "/metrics", role=None).text


# ---------------------------------------------------------------------------- roles

def test_a_403_names_every_role_allowed(client):
    ana = create_token(client.store, "annotator", "ana")[0]
    r = client.http.post("/pipeline/events", headers={"Authorization": f"Bearer {ana}"},
                         json={"kind": "gate", "model": "m", "version": "1", "result": "passed"})
    assert r.status_code == 403
    assert r.json()["error"] == "this needs the pipeline role (or admin); the token 'ana' is annotator"
    r = client.post("/retrain", role="annotator")
    assert r.json()["error"] == "this needs the admin role; the token 'annotator-user' is annotator"
    r = client.get("/feedback/export", role="viewer")
    assert r.json()["error"] == "this needs the annotator role (or admin); the token 'viewer-user' is viewer"
    pipe = create_token(client.store, "pipeline", "argo")[0]
    r = client.http.get("/predictions", headers={"Authorization": f"Bearer {pipe}"})
    assert r.status_code == 403
    assert r.json()["error"] == "this needs the viewer role (or annotator or admin); the token 'argo' is pipeline"
