"""AI Platform Prediction (ml v1) end to end: google-cloud-storage uploads a scikit-learn model and an ONNX
model the test builds; Google's discovery client `build("ml", "v1")` creates models and versions and
predicts; access follows ROLES.md (creators own what they create, modelUser shares one model, Viewer can
predict and ml.viewer cannot, the service agent needs bucket access to deploy)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import google.oauth2.credentials
import joblib
import numpy as np
import pytest
from google.cloud import storage
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError
from sklearn.linear_model import LogisticRegression

from conftest import Server

ALICE, BOB, CAROL, DAVE = "alice@example.com", "bob@example.com", "carol@example.com", "dave@example.com"
PROJECT, DATA_PROJECT = "ml-proj-1", "ml-data-1"
BUCKET, EXT_BUCKET = "ml-models-1", "ml-ext-models-1"
X = np.array([[0.0, 0.1], [0.2, 0.0], [1.0, 0.9], [0.9, 1.1], [0.1, 0.3], [1.2, 0.8]])
Y = np.array([0, 0, 1, 1, 0, 1])


def ml(server: Server, user: str = ALICE) -> Any:
    creds = google.oauth2.credentials.Credentials(token=server.token(user))
    return build("ml", "v1", credentials=creds, static_discovery=True, client_options={"api_endpoint": server.url})


def gcs(server: Server, user: str = ALICE) -> storage.Client:
    creds = google.oauth2.credentials.Credentials(token=server.token(user))
    return storage.Client(project=PROJECT, credentials=creds, client_options={"api_endpoint": server.url})


def status(e: pytest.ExceptionInfo[HttpError]) -> int:
    return int(e.value.status_code)


def _grant(server: Server, path: str, role: str, member: str) -> None:
    with server.client() as c:
        if path.startswith("/v3/"):
            policy = c.post(f"{path}:getIamPolicy", json={}).json()
        else:
            policy = c.get(f"{path}:getIamPolicy").json()
        policy.setdefault("bindings", []).append({"role": role, "members": [member]})
        r = c.post(f"{path}:setIamPolicy", json={"policy": policy})
        assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def sk_model() -> LogisticRegression:
    return LogisticRegression().fit(X, Y)


@pytest.fixture(scope="module")
def world(server: Server, sk_model: LogisticRegression) -> Iterator[dict[str, Any]]:
    from skl2onnx import to_onnx
    with server.client() as c:
        for pid in (PROJECT, DATA_PROJECT):
            assert c.post("/v3/projects", json={"projectId": pid, "parent": server.organization}).status_code == 200
    client = gcs(server)
    bucket = client.create_bucket(BUCKET)
    buf = io.BytesIO()
    joblib.dump(sk_model, buf)
    bucket.blob("sk/model.joblib").upload_from_string(buf.getvalue())
    onx = to_onnx(sk_model, X[:1].astype(np.float32), options={id(sk_model): {"zipmap": False}})
    bucket.blob("onnx/model.onnx").upload_from_string(onx.SerializeToString())
    bucket.blob("broken/model.joblib").upload_from_string(b"not a pickle")
    ext = storage.Client(project=DATA_PROJECT, credentials=client._credentials,
                         client_options={"api_endpoint": server.url}).create_bucket(EXT_BUCKET)
    ext.blob("sk/model.joblib").upload_from_string(buf.getvalue())
    config = ml(server).projects().getConfig(name=f"projects/{PROJECT}").execute()
    yield {"agent": config["serviceAccount"]}


def _version(server: Server, model: str, name: str, uri: str, framework: str = "SCIKIT_LEARN",
             user: str = ALICE) -> dict[str, Any]:
    op: dict[str, Any] = ml(server, user).projects().models().versions().create(
        parent=f"projects/{PROJECT}/models/{model}",
        body={"name": name, "deploymentUri": uri, "framework": framework, "runtimeVersion": "2.11",
              "pythonVersion": "3.7"}).execute()
    return op


def test_config_names_the_service_agent(server: Server, world: dict[str, Any]) -> None:
    agent = world["agent"]
    assert agent.startswith("service-") and agent.endswith("@cloud-ml.google.com.iam.gserviceaccount.com")


def test_deploy_and_predict(server: Server, world: dict[str, Any], sk_model: LogisticRegression) -> None:
    api = ml(server).projects()
    model = api.models().create(parent=f"projects/{PROJECT}", body={"name": "iris", "description": "d"}).execute()
    assert model["name"] == f"projects/{PROJECT}/models/iris"
    op = _version(server, "iris", "v1", f"gs://{BUCKET}/sk/")
    assert op["done"] is True and "error" not in op, op
    assert op["response"]["state"] == "READY" and op["metadata"]["operationType"] == "CREATE_VERSION"
    assert api.operations().get(name=op["name"]).execute()["done"] is True
    v1 = api.models().versions().get(name=f"projects/{PROJECT}/models/iris/versions/v1").execute()
    assert v1["isDefault"] is True and v1["state"] == "READY"
    out = api.predict(name=f"projects/{PROJECT}/models/iris", body={"instances": X.tolist()}).execute()
    assert out["predictions"] == sk_model.predict(X).tolist()
    op2 = _version(server, "iris", "v2", f"gs://{BUCKET}/onnx/", framework="ONNX")
    assert "error" not in op2, op2
    out2 = api.predict(name=f"projects/{PROJECT}/models/iris/versions/v2", body={"instances": X.tolist()}).execute()
    assert out2["predictions"] == sk_model.predict(X).tolist()
    listed = api.models().versions().list(parent=f"projects/{PROJECT}/models/iris").execute()["versions"]
    assert [v["name"].rsplit("/", 1)[1] for v in listed] == ["v1", "v2"]


def test_creator_owns_the_model_and_modeluser_shares_it(server: Server, world: dict[str, Any]) -> None:
    _grant(server, f"/v3/projects/{PROJECT}", "roles/ml.developer", f"user:{CAROL}")
    api = ml(server, CAROL).projects()
    api.models().create(parent=f"projects/{PROJECT}", body={"name": "carols"}).execute()
    policy = api.models().getIamPolicy(resource=f"projects/{PROJECT}/models/carols").execute()
    assert {"role": "roles/ml.modelOwner", "members": [f"user:{CAROL}"]} in policy["bindings"]
    # the developer owns her model, so she deploys on it; she cannot deploy on alice's model
    op = _version(server, "carols", "v1", f"gs://{BUCKET}/sk/", user=CAROL)
    assert "error" not in op, op
    with pytest.raises(HttpError) as e:
        _version(server, "iris", "v9", f"gs://{BUCKET}/sk/", user=CAROL)
    assert status(e) == 403 and "ml.versions.create" in str(e.value)
    # bob gets modelUser on carols only: predicts there, not on iris
    _grant(server, f"/v1/projects/{PROJECT}/models/carols", "roles/ml.modelUser", f"user:{BOB}")
    bob = ml(server, BOB).projects()
    assert bob.predict(name=f"projects/{PROJECT}/models/carols", body={"instances": [[0, 0]]}).execute()
    with pytest.raises(HttpError) as e:
        bob.predict(name=f"projects/{PROJECT}/models/iris", body={"instances": [[0, 0]]}).execute()
    assert status(e) == 403 and "ml.models.predict" in str(e.value)


def test_basic_viewer_predicts_ml_viewer_does_not(server: Server, world: dict[str, Any]) -> None:
    ml(server).projects().models().create(parent=f"projects/{PROJECT}", body={"name": "shared"}).execute()
    assert "error" not in _version(server, "shared", "v1", f"gs://{BUCKET}/sk/")
    _grant(server, f"/v3/projects/{PROJECT}", "roles/viewer", f"user:{DAVE}")
    assert ml(server, DAVE).projects().predict(name=f"projects/{PROJECT}/models/shared",
                                               body={"instances": [[1, 1]]}).execute()["predictions"]
    _grant(server, f"/v3/projects/{PROJECT}", "roles/ml.viewer", "user:erin@example.com")
    api = ml(server, "erin@example.com").projects()
    assert api.models().get(name=f"projects/{PROJECT}/models/shared").execute()["name"]
    with pytest.raises(HttpError) as e:
        api.predict(name=f"projects/{PROJECT}/models/shared", body={"instances": [[1, 1]]}).execute()
    assert status(e) == 403


def test_deploy_fails_until_the_service_agent_can_read_the_bucket(server: Server, world: dict[str, Any]) -> None:
    api = ml(server).projects()
    api.models().create(parent=f"projects/{PROJECT}", body={"name": "external"}).execute()
    op = _version(server, "external", "v1", f"gs://{EXT_BUCKET}/sk/")
    assert op["done"] is True and op["error"]["code"] == 9
    message = op["error"]["message"]
    assert world["agent"] in message and EXT_BUCKET in message
    assert "storage.buckets.list" in message and "storage.objects.get" in message
    assert "add-iam-policy-binding" in message
    failed = api.models().versions().get(name=f"projects/{PROJECT}/models/external/versions/v1").execute()
    assert failed["state"] == "FAILED" and failed["errorMessage"] == message
    b = gcs(server).bucket(EXT_BUCKET)
    policy = b.get_iam_policy(requested_policy_version=3)
    for role in ("roles/storage.objectViewer", "roles/storage.bucketViewer"):
        policy.bindings.append({"role": role, "members": {f"serviceAccount:{world['agent']}"}})
    b.set_iam_policy(policy)
    op = _version(server, "external", "v2", f"gs://{EXT_BUCKET}/sk/")
    assert "error" not in op, op


@pytest.mark.parametrize("body", [{"instances": "nope"}, {"instances": []}, {"instances": [["a", "b"]]},
                                  {"instances": [[1, 2, 3]]}, {"rows": [[1, 2]]}, {"instances": [[1], [1, 2]]}])
def test_bad_instances_are_400(server: Server, world: dict[str, Any], body: dict[str, Any]) -> None:
    ml(server).projects().models().create(parent=f"projects/{PROJECT}", body={"name": "strict"}).execute() \
        if not _exists(server, "strict") else None
    if not _exists(server, "strict/versions/v1"):
        assert "error" not in _version(server, "strict", "v1", f"gs://{BUCKET}/sk/")
    with pytest.raises(HttpError) as e:
        ml(server).projects().predict(name=f"projects/{PROJECT}/models/strict", body=body).execute()
    assert status(e) == 400


def _exists(server: Server, tail: str) -> bool:
    with server.client() as c:
        return c.get(f"/v1/projects/{PROJECT}/models/{tail}").status_code == 200


def test_bad_versions(server: Server, world: dict[str, Any]) -> None:
    api = ml(server).projects()
    api.models().create(parent=f"projects/{PROJECT}", body={"name": "bad"}).execute()
    op = _version(server, "bad", "v1", f"gs://{BUCKET}/broken/")
    assert op["error"]["code"] == 9 and "Cannot load" in op["error"]["message"]
    op = _version(server, "bad", "v2", f"gs://{BUCKET}/nothing-here/")
    assert "No model.joblib" in op["error"]["message"]
    for body in ({"name": "v3", "deploymentUri": "s3://x/y", "framework": "SCIKIT_LEARN"},
                 {"name": "v4", "deploymentUri": f"gs://{BUCKET}/sk/", "framework": "TENSORFLOW"},
                 {"name": "bad name", "deploymentUri": f"gs://{BUCKET}/sk/", "framework": "SCIKIT_LEARN"}):
        with pytest.raises(HttpError) as e:
            api.models().versions().create(parent=f"projects/{PROJECT}/models/bad", body=body).execute()
        assert status(e) == 400
    with pytest.raises(HttpError) as e:   # FAILED versions do not predict
        api.predict(name=f"projects/{PROJECT}/models/bad/versions/v1", body={"instances": [[0, 0]]}).execute()
    assert status(e) == 400


def test_delete_rules(server: Server, world: dict[str, Any]) -> None:
    api = ml(server).projects()
    api.models().create(parent=f"projects/{PROJECT}", body={"name": "temp"}).execute()
    _version(server, "temp", "a", f"gs://{BUCKET}/sk/")
    _version(server, "temp", "b", f"gs://{BUCKET}/sk/")
    with pytest.raises(HttpError) as e:
        api.models().delete(name=f"projects/{PROJECT}/models/temp").execute()
    assert status(e) == 400
    with pytest.raises(HttpError) as e:
        api.models().versions().delete(name=f"projects/{PROJECT}/models/temp/versions/a").execute()
    assert status(e) == 400       # the default version, while b exists
    api.models().versions().setDefault(name=f"projects/{PROJECT}/models/temp/versions/b", body={}).execute()
    assert api.models().versions().delete(name=f"projects/{PROJECT}/models/temp/versions/a").execute()["done"]
    api.models().versions().delete(name=f"projects/{PROJECT}/models/temp/versions/b").execute()
    assert api.models().delete(name=f"projects/{PROJECT}/models/temp").execute()["done"] is True
    with pytest.raises(HttpError) as e:
        api.models().get(name=f"projects/{PROJECT}/models/temp").execute()
    assert status(e) == 404


def test_operation_owner_and_listing(server: Server, world: dict[str, Any]) -> None:
    _grant(server, f"/v3/projects/{PROJECT}", "roles/ml.developer", "user:frank@example.com")
    frank = ml(server, "frank@example.com").projects()
    frank.models().create(parent=f"projects/{PROJECT}", body={"name": "franks"}).execute()
    op = _version(server, "franks", "v1", f"gs://{BUCKET}/sk/", user="frank@example.com")
    ops = ml(server).projects().operations()
    names = [o["name"] for o in ops.list(name=f"projects/{PROJECT}").execute()["operations"]]
    assert op["name"] in names
    # roles/ml.developer has no ml.operations.cancel: frank cancels his own operation through the
    # roles/ml.operationOwner he was granted on it, and nobody else's
    assert frank.operations().cancel(name=op["name"]).execute() == {}
    ml(server).projects().models().create(parent=f"projects/{PROJECT}", body={"name": "alices"}).execute()
    alices = _version(server, "alices", "v1", f"gs://{BUCKET}/sk/")["name"]
    with pytest.raises(HttpError) as e:
        frank.operations().cancel(name=alices).execute()
    assert status(e) == 403 and "ml.operations.cancel" in str(e.value)


def test_oversized_prediction_request_is_400(server: Server, world: dict[str, Any]) -> None:
    big = {"instances": [[0.123456789, 0.987654321]] * 70_000}          # ~2 MB of JSON: over Google's 1.5 MB
    with server.client() as c:
        r = c.post(f"/v1/projects/{PROJECT}/models/iris:predict", json=big)
    assert r.status_code == 400 and "batch prediction" in r.text


def test_predict_follows_set_default_patch_and_delete(server: Server, world: dict[str, Any],
                                                     sk_model: LogisticRegression) -> None:
    """Predict reads models and versions from the server's in-memory mirror: every write is seen by the
    very next prediction."""
    flipped = LogisticRegression().fit(X, 1 - Y)
    buf = io.BytesIO()
    joblib.dump(flipped, buf)
    gcs(server).bucket(BUCKET).blob("flipped/model.joblib").upload_from_string(buf.getvalue())
    api = ml(server).projects()
    api.models().create(parent=f"projects/{PROJECT}", body={"name": "switch"}).execute()
    assert "error" not in _version(server, "switch", "a", f"gs://{BUCKET}/sk/")
    assert "error" not in _version(server, "switch", "b", f"gs://{BUCKET}/flipped/")
    model, body = f"projects/{PROJECT}/models/switch", {"instances": X.tolist()}
    plain, inverted = sk_model.predict(X).tolist(), flipped.predict(X).tolist()
    assert plain != inverted
    assert api.predict(name=model, body=body).execute()["predictions"] == plain        # a: the first, default
    api.models().versions().setDefault(name=f"{model}/versions/b", body={}).execute()
    assert api.predict(name=model, body=body).execute()["predictions"] == inverted     # b now
    api.models().versions().patch(name=f"{model}/versions/b", body={"description": "flipped"},
                                  updateMask="description").execute()
    assert api.predict(name=model, body=body).execute()["predictions"] == inverted
    api.models().versions().setDefault(name=f"{model}/versions/a", body={}).execute()
    assert api.predict(name=model, body=body).execute()["predictions"] == plain
    api.models().versions().delete(name=f"{model}/versions/b").execute()
    with pytest.raises(HttpError) as e:
        api.predict(name=f"{model}/versions/b", body=body).execute()
    assert status(e) == 404
    api.models().versions().delete(name=f"{model}/versions/a").execute()
    with pytest.raises(HttpError) as e:
        api.predict(name=model, body=body).execute()
    assert status(e) == 400 and "no default version" in str(e.value)
    api.models().delete(name=model).execute()
    with pytest.raises(HttpError) as e:
        api.predict(name=model, body=body).execute()
    assert status(e) == 404


def test_large_prediction_runs_off_the_event_loop(server: Server, world: dict[str, Any],
                                                  sk_model: LogisticRegression) -> None:
    """Over versions.INLINE_INSTANCES instances the prediction is handed to a worker thread: same answer."""
    rows = np.tile(X, (50, 1))
    out = ml(server).projects().predict(name=f"projects/{PROJECT}/models/iris",
                                        body={"instances": rows.tolist()}).execute()
    assert out["predictions"] == sk_model.predict(rows).tolist()


def test_lists_page_and_a_missing_item_is_404(server: Server, world: dict[str, Any]) -> None:
    api = ml(server).projects()
    for name in ("paged_a", "paged_b"):
        api.models().create(parent=f"projects/{PROJECT}", body={"name": name}).execute()
    for version in ("v1", "v2"):
        _version(server, "paged_a", version, f"gs://{BUCKET}/sk/")
    assert api.models().versions().list(parent=f"projects/{PROJECT}/models/paged_b").execute() == {}
    for list_, kw, key in ((api.models().list, {"parent": f"projects/{PROJECT}"}, "models"),
                           (api.operations().list, {"name": f"projects/{PROJECT}"}, "operations"),
                           (api.models().versions().list, {"parent": f"projects/{PROJECT}/models/paged_a"},
                            "versions")):
        whole = [x["name"] for x in list_(**kw).execute()[key]]
        paged: list[str] = []
        token, pages = None, 0
        while True:
            page = list_(pageSize=1, pageToken=token, **kw).execute()
            paged += [x["name"] for x in page.get(key, [])]
            pages += 1
            token = page.get("nextPageToken")
            if not token:
                break
        assert paged == whole and pages >= len(whole) >= 2, (key, paged, whole)
    for call, message in (
            (api.models().get(name=f"projects/{PROJECT}/models/nope"), f"Model projects/{PROJECT}/models/nope"),
            (api.models().getIamPolicy(resource=f"projects/{PROJECT}/models/nope"),
             f"Model projects/{PROJECT}/models/nope"),
            (api.operations().get(name=f"projects/{PROJECT}/operations/nope"),
             f"Operation projects/{PROJECT}/operations/nope")):
        with pytest.raises(HttpError) as e:
            call.execute()
        assert status(e) == 404 and f"{message} not found." in e.value.content.decode()
    with pytest.raises(HttpError) as e:
        ml(server, "mallory@example.com").projects().models().get(name=f"projects/{PROJECT}/models/nope").execute()
    assert status(e) == 403 and "ml.models.get" in e.value.content.decode()
