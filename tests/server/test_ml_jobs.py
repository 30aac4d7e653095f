"""ml v1 jobs end to end: batch prediction and training jobs driven by Google's discovery client
`build("ml", "v1")`, their files in keycard's object store through google-cloud-storage.

The server runs with KEYCARD_ML_BATCH_DELAY (a pause after each prediction batch) so that a job with
batchSize 1 runs long enough to be cancelled or interrupted; jobs with the default batch size are
unaffected."""

from __future__ import annotations

import io
import json
import os
import signal
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import google.oauth2.credentials
import joblib
import numpy as np
import pytest
from google.cloud import storage
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError
from sklearn.linear_model import LogisticRegression

from conftest import Server, serve, start_server, stop_server

ALICE, BOB, CAROL, DAVE = "alice@example.com", "bob@example.com", "carol@example.com", "dave@example.com"
PROJECT, DATA_PROJECT = "mlj-proj-1", "mlj-data-1"
BUCKET, EXT = "mlj-bucket-1", "mlj-ext-1"
X = np.array([[0.0, 0.1], [0.2, 0.0], [1.0, 0.9], [0.9, 1.1], [0.1, 0.3], [1.2, 0.8]])
Y = np.array([0, 0, 1, 1, 0, 1])
TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")
DELAY = "0.02"
RESULTS, ERRORS = "prediction.results-00000-of-00001", "prediction.errors_stats-00000-of-00001"


def _start(database: str, log: Path) -> Server:
    old = os.environ.get("KEYCARD_ML_BATCH_DELAY")
    os.environ["KEYCARD_ML_BATCH_DELAY"] = DELAY
    try:
        return start_server(database, log, extra_args=["--enable-training"])
    finally:
        if old is None:
            os.environ.pop("KEYCARD_ML_BATCH_DELAY")
        else:
            os.environ["KEYCARD_ML_BATCH_DELAY"] = old


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    d = tmp_path_factory.mktemp("kcjobs")
    srv = _start(f"sqlite:///{d / 'keycard.db'}", d / "server.log")
    yield srv
    stop_server(srv)


def ml(server: Server, user: str = ALICE) -> Any:
    creds = google.oauth2.credentials.Credentials(token=server.token(user))
    return build("ml", "v1", credentials=creds, static_discovery=True, client_options={"api_endpoint": server.url})


def gcs(server: Server, user: str = ALICE, project: str = PROJECT) -> storage.Client:
    creds = google.oauth2.credentials.Credentials(token=server.token(user))
    return storage.Client(project=project, credentials=creds, client_options={"api_endpoint": server.url})


def _grant(server: Server, path: str, role: str, member: str) -> None:
    with server.client() as c:
        policy = c.post(f"{path}:getIamPolicy", json={}).json() if path.startswith("/v3/") else \
            c.get(f"{path}:getIamPolicy").json()
        policy.setdefault("bindings", []).append({"role": role, "members": [member]})
        r = c.post(f"{path}:setIamPolicy", json={"policy": policy})
        assert r.status_code == 200, r.text


def _bucket_grant(server: Server, bucket: str, role: str, member: str) -> None:
    b = gcs(server).bucket(bucket)
    policy = b.get_iam_policy(requested_policy_version=3)
    policy.bindings.append({"role": role, "members": {member}})
    b.set_iam_policy(policy)


def _lines(rows: Any) -> bytes:
    return ("\n".join(json.dumps(r) for r in rows) + "\n").encode()


@pytest.fixture(scope="module")
def sk_model() -> LogisticRegression:
    return LogisticRegression().fit(X, Y)


def _setup(server: Server, model: LogisticRegression) -> str:
    """Projects, buckets, model files, inputs, a deployed model; returns the project's ML service agent."""
    with server.client() as c:
        for pid in (PROJECT, DATA_PROJECT):
            assert c.post("/v3/projects", json={"projectId": pid, "parent": server.organization}).status_code == 200
    bucket = gcs(server).create_bucket(BUCKET)
    buf = io.BytesIO()
    joblib.dump(model, buf)
    bucket.blob("sk/model.joblib").upload_from_string(buf.getvalue())
    bucket.blob("in/a.json").upload_from_string(_lines(X.tolist()))
    bucket.blob("in/b.json").upload_from_string(_lines(X[::-1].tolist()))
    bucket.blob("big/many.json").upload_from_string(_lines(np.tile(X, (500, 1)).tolist()))
    gcs(server, project=DATA_PROJECT).create_bucket(EXT)
    api = ml(server).projects()
    api.models().create(parent=f"projects/{PROJECT}", body={"name": "iris"}).execute()
    op = api.models().versions().create(parent=f"projects/{PROJECT}/models/iris", body={
        "name": "v1", "deploymentUri": f"gs://{BUCKET}/sk/", "framework": "SCIKIT_LEARN"}).execute()
    assert "error" not in op, op
    return str(api.getConfig(name=f"projects/{PROJECT}").execute()["serviceAccount"])


@pytest.fixture(scope="module")
def world(server: Server, sk_model: LogisticRegression) -> dict[str, Any]:
    return {"agent": _setup(server, sk_model)}


_n = 0


def _job_id(prefix: str) -> str:
    global _n
    _n += 1
    return f"{prefix}_{_n}_{int(time.time() * 1000) % 10**8}"


def batch(server: Server, job_id: str, *, user: str = ALICE, inputs: list[str] | None = None,
          out: str | None = None, **extra: Any) -> dict[str, Any]:
    pin: dict[str, Any] = {"dataFormat": "JSON", "inputPaths": inputs or [f"gs://{BUCKET}/in/*"],
                           "outputPath": out or f"gs://{BUCKET}/out/{job_id}", "region": "us-central1"}
    if not any(k in extra for k in ("modelName", "versionName", "uri")):
        pin["modelName"] = f"projects/{PROJECT}/models/iris"
    pin.update(extra)
    job: dict[str, Any] = ml(server, user).projects().jobs().create(
        parent=f"projects/{PROJECT}", body={"jobId": job_id, "predictionInput": pin}).execute()
    return job


def wait(server: Server, job_id: str, states: tuple[str, ...] = TERMINAL, timeout: float = 90,
         project: str = PROJECT) -> dict[str, Any]:
    api = ml(server).projects().jobs()
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = api.get(name=f"projects/{project}/jobs/{job_id}").execute()
        if job["state"] in states:
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job['state']}: {job}"
        time.sleep(0.1)


def _objects(server: Server, bucket: str, prefix: str) -> list[str]:
    return [b.name for b in gcs(server).list_blobs(bucket, prefix=prefix)]


def _read(server: Server, bucket: str, name: str) -> list[Any]:
    raw = gcs(server).bucket(bucket).blob(name).download_as_bytes()
    return [json.loads(line) for line in raw.decode().splitlines() if line]


# ---------------------------------------------------------------------------------- batch prediction

def test_batch_job_writes_the_models_predictions(server: Server, world: dict[str, Any],
                                                sk_model: LogisticRegression) -> None:
    jid = _job_id("batch")
    job = batch(server, jid)
    assert job["jobId"] == jid and job["state"] in ("QUEUED", "RUNNING", "SUCCEEDED") and job["createTime"]
    done = wait(server, jid)
    assert done["state"] == "SUCCEEDED", done
    assert done["startTime"] and done["endTime"] >= done["startTime"]
    out = done["predictionOutput"]
    assert out["outputPath"] == f"gs://{BUCKET}/out/{jid}" and out["predictionCount"] == "12"
    assert out["errorCount"] == "0" and "nodeHours" in out
    results = _read(server, BUCKET, f"out/{jid}/{RESULTS}")
    expected_inputs = X.tolist() + X[::-1].tolist()
    assert [r["instance"] for r in results] == expected_inputs
    assert [r["prediction"] for r in results] == sk_model.predict(np.array(expected_inputs)).tolist()
    assert _read(server, BUCKET, f"out/{jid}/{ERRORS}") == []
    # the creator owns the job (roles/ml.jobOwner on it), as in Google
    policy = ml(server).projects().jobs().getIamPolicy(resource=f"projects/{PROJECT}/jobs/{jid}").execute()
    assert {"role": "roles/ml.jobOwner", "members": [f"user:{ALICE}"]} in policy["bindings"]
    # a version name and a model in the store (uri) give the same predictions
    for jid2, extra in ((_job_id("by_version"), {"versionName": f"projects/{PROJECT}/models/iris/versions/v1"}),
                        (_job_id("by_uri"), {"uri": f"gs://{BUCKET}/sk/", "framework": "SCIKIT_LEARN"})):
        batch(server, jid2, inputs=[f"gs://{BUCKET}/in/a.json"], **extra)
        assert wait(server, jid2)["state"] == "SUCCEEDED"
        got = [r["prediction"] for r in _read(server, BUCKET, f"out/{jid2}/{RESULTS}")]
        assert got == sk_model.predict(X).tolist()


def test_batch_job_fails_cleanly_when_its_identity_cannot_write(server: Server, world: dict[str, Any]) -> None:
    agent = world["agent"]
    jid = _job_id("no_write")
    batch(server, jid, out=f"gs://{EXT}/results/{jid}")
    done = wait(server, jid)
    assert done["state"] == "FAILED", done
    msg = done["errorMessage"]
    assert f"serviceAccount:{agent}" in msg and "storage.objects.create" in msg
    assert f"gs://{EXT}/results/{jid}/{RESULTS}" in msg
    assert (f"keycard storage buckets add-iam-policy-binding gs://{EXT} --member=serviceAccount:{agent} "
            "--role=roles/storage.objectCreator") in msg
    assert "predictionOutput" not in done
    assert _objects(server, EXT, "results/") == []
    # after the grant the same job succeeds
    _bucket_grant(server, EXT, "roles/storage.objectCreator", f"serviceAccount:{agent}")
    jid2 = _job_id("now_write")
    batch(server, jid2, out=f"gs://{EXT}/results/{jid2}")
    assert wait(server, jid2)["state"] == "SUCCEEDED"
    assert sorted(_objects(server, EXT, f"results/{jid2}/")) == [f"results/{jid2}/{ERRORS}",
                                                                  f"results/{jid2}/{RESULTS}"]


def test_batch_job_runs_as_the_service_account_it_names(server: Server, world: dict[str, Any]) -> None:
    with server.client() as c:
        sa = c.post(f"/v1/projects/{PROJECT}/serviceAccounts", json={"accountId": "batch-runner"}).json()
    # the caller needs actAs on it: bob (jobs.create and predict, no actAs) is refused at create
    _grant(server, f"/v3/projects/{PROJECT}", "roles/ml.developer", f"user:{BOB}")
    with pytest.raises(HttpError) as e:
        batch(server, _job_id("no_actas"), user=BOB, serviceAccount=sa["email"])
    assert e.value.status_code == 403 and "iam.serviceAccounts.actAs" in str(e.value)
    assert (f"keycard iam service-accounts add-iam-policy-binding {sa['email']} --project={PROJECT} "
            f"--member=user:{BOB} --role=roles/iam.serviceAccountUser") in str(e.value)
    jid = _job_id("as_sa")
    batch(server, jid, serviceAccount=sa["email"])
    done = wait(server, jid)
    assert done["state"] == "FAILED"
    assert f"serviceAccount:{sa['email']} lacks storage.objects.create" in done["errorMessage"]
    _bucket_grant(server, BUCKET, "roles/storage.objectCreator", f"serviceAccount:{sa['email']}")
    jid = _job_id("as_sa")
    batch(server, jid, serviceAccount=sa["email"])
    done = wait(server, jid)
    assert done["state"] == "FAILED" and "storage.objects.list on gs://mlj-bucket-1" in done["errorMessage"]
    assert "--role=roles/storage.objectViewer" in done["errorMessage"]
    _bucket_grant(server, BUCKET, "roles/storage.objectViewer", f"serviceAccount:{sa['email']}")
    jid = _job_id("as_sa")
    assert batch(server, jid, serviceAccount=sa["email"])["predictionInput"]["serviceAccount"] == sa["email"]
    assert wait(server, jid)["state"] == "SUCCEEDED"


def test_permission_rule_jobs_create_plus_predict_unless_a_model_uri(server: Server, world: dict[str, Any]) -> None:
    with server.client() as c:
        for rid, perms in (("jobsOnly", ["ml.jobs.create", "ml.jobs.get"]),
                           ("jobsAndVersionsPredict", ["ml.jobs.create", "ml.jobs.get", "ml.versions.predict"])):
            r = c.post(f"/v1/projects/{PROJECT}/roles", json={"roleId": rid, "role": {
                "title": rid, "includedPermissions": perms}})
            assert r.status_code == 200, r.text
    _grant(server, f"/v3/projects/{PROJECT}", f"projects/{PROJECT}/roles/jobsOnly", f"user:{CAROL}")
    _grant(server, f"/v3/projects/{PROJECT}", f"projects/{PROJECT}/roles/jobsAndVersionsPredict",
           "user:erin@example.com")
    # ml.jobs.create alone: a model uri is enough, a deployed model is not
    assert batch(server, _job_id("uri_only"), user=CAROL, uri=f"gs://{BUCKET}/sk/", framework="SCIKIT_LEARN")
    for extra, perm in (({}, "ml.models.predict"),
                        ({"versionName": f"projects/{PROJECT}/models/iris/versions/v1"}, "ml.versions.predict")):
        with pytest.raises(HttpError) as e:
            batch(server, _job_id("no_predict"), user=CAROL, **extra)
        assert e.value.status_code == 403 and perm in str(e.value)
    # ml.versions.predict suffices for a version, not for the model; ml.models.predict (modelUser) for both
    assert batch(server, _job_id("ver"), user="erin@example.com",
                 versionName=f"projects/{PROJECT}/models/iris/versions/v1")
    with pytest.raises(HttpError) as e:
        batch(server, _job_id("model"), user="erin@example.com")
    assert e.value.status_code == 403 and "ml.models.predict" in str(e.value)
    _grant(server, f"/v1/projects/{PROJECT}/models/iris", "roles/ml.modelUser", f"user:{CAROL}")
    jid = _job_id("shared")
    assert batch(server, jid, user=CAROL)["state"]
    assert wait(server, jid)["state"] == "SUCCEEDED"
    # and without ml.jobs.create nothing goes
    with pytest.raises(HttpError) as e:
        batch(server, _job_id("nobody"), user="nobody@example.com", uri=f"gs://{BUCKET}/sk/",
              framework="SCIKIT_LEARN")
    assert e.value.status_code == 403 and "ml.jobs.create" in str(e.value)


def test_developer_lists_every_job_but_cancels_only_their_own(server: Server, world: dict[str, Any]) -> None:
    _grant(server, f"/v3/projects/{PROJECT}", "roles/ml.developer", f"user:{DAVE}")
    alices = _job_id("alices_slow")
    batch(server, alices, inputs=[f"gs://{BUCKET}/big/many.json"], batchSize=1)
    daves = _job_id("daves_slow")
    batch(server, daves, user=DAVE, inputs=[f"gs://{BUCKET}/big/many.json"], batchSize=1)
    dave = ml(server, DAVE).projects().jobs()
    listed = {j["jobId"] for j in dave.list(parent=f"projects/{PROJECT}").execute()["jobs"]}
    assert {alices, daves} <= listed
    assert dave.get(name=f"projects/{PROJECT}/jobs/{alices}").execute()["jobId"] == alices
    with pytest.raises(HttpError) as e:
        dave.cancel(name=f"projects/{PROJECT}/jobs/{alices}", body={}).execute()
    assert e.value.status_code == 403 and "ml.jobs.cancel" in str(e.value)
    perms = dave.testIamPermissions(resource=f"projects/{PROJECT}/jobs/{daves}",
                                    body={"permissions": ["ml.jobs.cancel", "ml.jobs.get"]}).execute()
    assert sorted(perms["permissions"]) == ["ml.jobs.cancel", "ml.jobs.get"]
    assert dave.cancel(name=f"projects/{PROJECT}/jobs/{daves}", body={}).execute() == {}
    assert wait(server, daves)["state"] == "CANCELLED"
    ml(server).projects().jobs().cancel(name=f"projects/{PROJECT}/jobs/{alices}", body={}).execute()
    assert wait(server, alices)["state"] == "CANCELLED"


def test_cancel_mid_run_leaves_no_output(server: Server, world: dict[str, Any]) -> None:
    jid = _job_id("cancel_me")
    batch(server, jid, inputs=[f"gs://{BUCKET}/big/many.json"], batchSize=1)
    running = wait(server, jid, ("RUNNING", *TERMINAL))
    assert running["state"] == "RUNNING", running
    time.sleep(0.5)
    api = ml(server).projects().jobs()
    assert api.cancel(name=f"projects/{PROJECT}/jobs/{jid}", body={}).execute() == {}
    assert api.get(name=f"projects/{PROJECT}/jobs/{jid}").execute()["state"] in ("CANCELLING", "CANCELLED")
    done = wait(server, jid, timeout=10)
    assert done["state"] == "CANCELLED" and done["endTime"]
    assert _objects(server, BUCKET, f"out/{jid}") == []
    with pytest.raises(HttpError) as e:       # a finished job cannot be cancelled
        api.cancel(name=f"projects/{PROJECT}/jobs/{jid}", body={}).execute()
    assert e.value.status_code == 400


def test_get_list_patch(server: Server, world: dict[str, Any]) -> None:
    jid = _job_id("labelled")
    batch(server, jid, inputs=[f"gs://{BUCKET}/in/a.json"])
    wait(server, jid)
    api = ml(server).projects().jobs()
    name = f"projects/{PROJECT}/jobs/{jid}"
    job = api.get(name=name).execute()
    patched = api.patch(name=name, updateMask="labels", body={"labels": {"team": "a"}, "etag": job["etag"]}).execute()
    assert patched["labels"] == {"team": "a"} and patched["etag"] != job["etag"]
    with pytest.raises(HttpError) as e:
        api.patch(name=name, updateMask="labels", body={"labels": {"team": "b"}, "etag": job["etag"]}).execute()
    assert e.value.status_code == 409
    with pytest.raises(HttpError) as e:
        api.patch(name=name, updateMask="state", body={"state": "SUCCEEDED"}).execute()
    assert e.value.status_code == 400
    found = api.list(parent=f"projects/{PROJECT}", filter="labels.team=a").execute()["jobs"]
    assert [j["jobId"] for j in found] == [jid]
    succeeded = api.list(parent=f"projects/{PROJECT}", filter='state="SUCCEEDED"').execute()["jobs"]
    assert jid in {j["jobId"] for j in succeeded} and all(j["state"] == "SUCCEEDED" for j in succeeded)
    with pytest.raises(HttpError) as e:
        api.get(name=f"projects/{PROJECT}/jobs/no_such_job").execute()
    assert e.value.status_code == 404


# ---------------------------------------------------------------------------------------- bad inputs

_GOOD = {"dataFormat": "JSON", "inputPaths": [f"gs://{BUCKET}/in/a.json"], "outputPath": f"gs://{BUCKET}/out/x",
         "region": "us-central1", "uri": f"gs://{BUCKET}/sk/", "framework": "SCIKIT_LEARN"}
_TRAIN = {"scaleTier": "BASIC", "packageUris": [f"gs://{BUCKET}/pkg/t.tar.gz"], "pythonModule": "trainer.task",
          "region": "us-central1"}


@pytest.mark.parametrize(("body", "field"), [
    ({"predictionInput": {**_GOOD, "dataFormat": "CSV"}}, "dataFormat"),
    ({"predictionInput": {**_GOOD, "inputPaths": ["s3://x/y"]}}, "inputPaths"),
    ({"predictionInput": {**_GOOD, "inputPaths": [f"gs://{BUCKET}/in/*/a.json"]}}, "inputPaths"),
    ({"predictionInput": {**_GOOD, "outputPath": f"gs://{BUCKET}/../etc"}}, "outputPath"),
    ({"predictionInput": {**_GOOD, "outputPath": f"gs://{BUCKET}/out/../../x"}}, "outputPath"),
    ({"predictionInput": {**_GOOD, "outputPath": "gs://../x"}}, "outputPath"),
    ({"predictionInput": {**_GOOD, "framework": "TENSORFLOW"}}, "framework"),
    ({"predictionInput": {k: v for k, v in _GOOD.items() if k != "framework"}}, "framework"),
    ({"predictionInput": {**_GOOD, "modelName": f"projects/{PROJECT}/models/iris"}}, "modelName"),
    ({"predictionInput": {**_GOOD, "batchSize": "0"}}, "batchSize"),
    ({"predictionInput": _GOOD, "trainingInput": _TRAIN}, "predictionInput"),
    ({}, "predictionInput"),
    ({"trainingInput": {**_TRAIN, "pythonModule": "trainer;rm -rf"}}, "pythonModule"),
    ({"trainingInput": {**_TRAIN, "packageUris": [f"gs://{BUCKET}/pkg/t.zip"]}}, "packageUris"),
    ({"trainingInput": {**_TRAIN, "packageUris": [f"gs://{BUCKET}/pkg/../../t.py"]}}, "packageUris"),
    ({"trainingInput": {**_TRAIN, "scaleTier": "PREMIUM_1"}}, "scaleTier"),
    ({"trainingInput": {**_TRAIN, "scheduling": {"maxRunningTime": "forever"}}}, "maxRunningTime"),
])
def test_bad_jobs_are_400_naming_the_field(server: Server, world: dict[str, Any], body: dict[str, Any],
                                           field: str) -> None:
    with pytest.raises(HttpError) as e:
        ml(server).projects().jobs().create(parent=f"projects/{PROJECT}",
                                            body={"jobId": _job_id("bad"), **body}).execute()
    assert e.value.status_code == 400, e.value
    assert field in str(e.value)


def test_bad_job_ids_and_duplicates(server: Server, world: dict[str, Any]) -> None:
    api = ml(server).projects().jobs()
    for bad in ("1starts_with_digit", "has-dash", "x" * 129):
        with pytest.raises(HttpError) as e:
            api.create(parent=f"projects/{PROJECT}", body={"jobId": bad, "predictionInput": _GOOD}).execute()
        assert e.value.status_code == 400 and "jobId" in str(e.value)
    jid = _job_id("dup")
    api.create(parent=f"projects/{PROJECT}", body={"jobId": jid, "predictionInput": _GOOD}).execute()
    with pytest.raises(HttpError) as e:
        api.create(parent=f"projects/{PROJECT}", body={"jobId": jid, "predictionInput": _GOOD}).execute()
    assert e.value.status_code == 409


def test_bad_inputs_at_run_time_fail_the_job_with_the_reason(server: Server, world: dict[str, Any]) -> None:
    bucket = gcs(server).bucket(BUCKET)
    bucket.blob("mixed/m.json").upload_from_string(b'[0.0, 0.1]\n{not json\n["a", "b"]\n[1.0, 0.9]\n')
    bucket.blob("junk/j.json").upload_from_string(b"{not json\n[1, 2, 3]\n")
    jid = _job_id("missing")
    batch(server, jid, inputs=[f"gs://{BUCKET}/in/nope.json"])
    done = wait(server, jid)
    assert done["state"] == "FAILED" and f"gs://{BUCKET}/in/nope.json does not exist" in done["errorMessage"]
    jid = _job_id("nomatch")
    batch(server, jid, inputs=[f"gs://{BUCKET}/nothing/*"])
    assert "No input files match" in wait(server, jid)["errorMessage"]
    # bad lines are counted and reported; the good ones are predicted
    jid = _job_id("mixed")
    batch(server, jid, inputs=[f"gs://{BUCKET}/mixed/m.json"])
    done = wait(server, jid)
    assert done["state"] == "SUCCEEDED" and done["predictionOutput"]["predictionCount"] == "2"
    assert done["predictionOutput"]["errorCount"] == "2"
    errors = _read(server, BUCKET, f"out/{jid}/{ERRORS}")
    assert [e["line"] for e in errors] == [2, 3] and "not a JSON instance" in errors[0]["error"]
    # every line bad: FAILED with the first reason, nothing written
    jid = _job_id("junk")
    batch(server, jid, inputs=[f"gs://{BUCKET}/junk/j.json"])
    done = wait(server, jid)
    assert done["state"] == "FAILED" and "line 1: not a JSON instance" in done["errorMessage"]
    assert _objects(server, BUCKET, f"out/{jid}") == []
    # the wrong framework for the files under uri
    jid = _job_id("wrong_fw")
    batch(server, jid, uri=f"gs://{BUCKET}/sk/", framework="ONNX")
    done = wait(server, jid)
    assert done["state"] == "FAILED" and "No model.onnx" in done["errorMessage"]


# -------------------------------------------------------------------------------------------- training

TASK = r'''
import os, sys
import google.auth
from google.auth.transport.requests import Request
from google.cloud import storage

creds, project = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
creds.refresh(Request())
print("identity", creds.service_account_email, "project", project)
client = storage.Client(project=project, credentials=creds,
                        client_options={"api_endpoint": os.environ["KEYCARD_ENDPOINT"]})
print("objects", ",".join(sorted(b.name for b in client.list_blobs(sys.argv[1], prefix="in/"))))
print("args", " ".join(sys.argv[1:]))
print("a warning on stderr", file=sys.stderr)
'''


def _sdist(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def train(server: Server, job_id: str, **spec: Any) -> dict[str, Any]:
    body = {"jobId": job_id, "trainingInput": {"scaleTier": "BASIC", "region": "us-central1", **spec}}
    job: dict[str, Any] = ml(server).projects().jobs().create(parent=f"projects/{PROJECT}", body=body).execute()
    return job


def test_training_job_acts_as_its_service_account_and_keeps_its_logs(server: Server, world: dict[str, Any]) -> None:
    with server.client() as c:
        sa = c.post(f"/v1/projects/{PROJECT}/serviceAccounts", json={"accountId": "trainer"}).json()
    _bucket_grant(server, BUCKET, "roles/storage.objectViewer", f"serviceAccount:{sa['email']}")
    pkg = _sdist({"trainer-0.1/setup.py": "", "trainer-0.1/trainer/__init__.py": "",
                  "trainer-0.1/trainer/task.py": TASK})
    gcs(server).bucket(BUCKET).blob("pkg/trainer-0.1.tar.gz").upload_from_string(pkg)
    jid = _job_id("train")
    job = train(server, jid, packageUris=[f"gs://{BUCKET}/pkg/trainer-0.1.tar.gz"], pythonModule="trainer.task",
                args=[BUCKET, "--epochs=2"], serviceAccount=sa["email"])
    assert job["trainingInput"]["serviceAccount"] == sa["email"]
    done = wait(server, jid, timeout=120)
    with server.client() as c:
        logs = c.get(f"/v1/projects/{PROJECT}/jobs/{jid}:keycardLogs").json()["entries"]
    text = [e["textPayload"] for e in logs]
    assert done["state"] == "SUCCEEDED", (done, text)
    assert f"identity {sa['email']} project {PROJECT}" in text
    assert "objects in/a.json,in/b.json" in text
    assert f"args {BUCKET} --epochs=2" in text
    warn = next(e for e in logs if e["textPayload"] == "a warning on stderr")
    assert warn["severity"] == "ERROR" and warn["resource"]["labels"]["job_id"] == jid
    assert all(e["logName"] == f"projects/{PROJECT}/logs/master-replica-0" for e in logs)
    # the job's attachment is gone with the job
    with server.client() as c:
        atts = c.get(f"/v1/projects/-/serviceAccounts/{sa['email']}/keycardAttachments").json()
    assert atts.get("attachments", []) == []
    # who may not read the job may not read its logs
    with server.client("mallory@example.com") as c:
        r = c.get(f"/v1/projects/{PROJECT}/jobs/{jid}:keycardLogs")
    assert r.status_code == 403 and "ml.jobs.get" in r.text


def test_failing_training_jobs(server: Server, world: dict[str, Any]) -> None:
    bucket = gcs(server).bucket(BUCKET)
    bucket.blob("pkg/boom.py").upload_from_string(b"import sys\nprint('starting')\nsys.exit(3)\n")
    jid = _job_id("boom")
    train(server, jid, packageUris=[f"gs://{BUCKET}/pkg/boom.py"], pythonModule="boom")
    done = wait(server, jid, timeout=60)
    assert done["state"] == "FAILED" and "exited with a non-zero status of 3" in done["errorMessage"]
    with server.client() as c:
        assert "starting" in [e["textPayload"] for e in c.get(
            f"/v1/projects/{PROJECT}/jobs/{jid}:keycardLogs").json()["entries"]]
    # the service agent cannot read a package in another project's bucket
    gcs(server, project=DATA_PROJECT).bucket(EXT).blob("pkg/t.py").upload_from_string(b"print(1)\n")
    jid = _job_id("unreadable")
    train(server, jid, packageUris=[f"gs://{EXT}/pkg/t.py"], pythonModule="t")
    done = wait(server, jid, timeout=60)
    assert done["state"] == "FAILED" and "storage.objects.get" in done["errorMessage"]
    assert world["agent"] in done["errorMessage"] and "--role=roles/storage.objectViewer" in done["errorMessage"]
    # a job that runs too long is stopped; a running one can be cancelled
    bucket.blob("pkg/sleepy.py").upload_from_string(b"import time\nprint('sleeping', flush=True)\ntime.sleep(120)\n")
    jid = _job_id("slow")
    train(server, jid, packageUris=[f"gs://{BUCKET}/pkg/sleepy.py"], pythonModule="sleepy",
          scheduling={"maxRunningTime": "2s"})
    done = wait(server, jid, timeout=60)
    assert done["state"] == "FAILED" and "maxRunningTime" in done["errorMessage"]
    jid = _job_id("cancelled")
    train(server, jid, packageUris=[f"gs://{BUCKET}/pkg/sleepy.py"], pythonModule="sleepy")
    wait(server, jid, ("RUNNING",))
    ml(server).projects().jobs().cancel(name=f"projects/{PROJECT}/jobs/{jid}", body={}).execute()
    assert wait(server, jid, timeout=20)["state"] == "CANCELLED"


# ------------------------------------------------------------------------------------------- restarts

def test_jobs_survive_a_server_killed_mid_run(tmp_path: Path, sk_model: LogisticRegression) -> None:
    db = f"sqlite:///{tmp_path / 'kc.db'}"
    srv = _start(db, tmp_path / "server.log")
    try:
        _setup(srv, sk_model)
        gcs(srv).bucket(BUCKET).blob("pkg/sleepy.py").upload_from_string(b"import time\ntime.sleep(120)\n")
        jid = _job_id("survivor")
        batch(srv, jid, inputs=[f"gs://{BUCKET}/big/many.json"], batchSize=20)
        tid = _job_id("trainer_lost")
        train(srv, tid, packageUris=[f"gs://{BUCKET}/pkg/sleepy.py"], pythonModule="sleepy")
        assert wait(srv, jid, ("RUNNING",))["state"] == "RUNNING"
        wait(srv, tid, ("RUNNING",))
        time.sleep(0.5)
        srv.process.send_signal(signal.SIGKILL)
        srv.process.wait()
    except BaseException:
        stop_server(srv)
        raise
    again = _serve(db, tmp_path / "server2.log", srv.organization)
    try:
        done = wait(again, jid, timeout=60)
        assert done["state"] == "SUCCEEDED", done
        assert done["predictionOutput"]["predictionCount"] == "3000"
        assert len(_read(again, BUCKET, f"out/{jid}/{RESULTS}")) == 3000
        lost = wait(again, tid, timeout=30)
        assert lost["state"] == "FAILED" and "stopped before the job finished" in lost["errorMessage"]
    finally:
        stop_server(again)


def _serve(database: str, log: Path, organization: str) -> Server:
    old = os.environ.get("KEYCARD_ML_BATCH_DELAY")
    os.environ["KEYCARD_ML_BATCH_DELAY"] = DELAY
    try:
        return serve(database, log, organization, extra_args=["--enable-training"])
    finally:
        if old is None:
            os.environ.pop("KEYCARD_ML_BATCH_DELAY")
        else:
            os.environ["KEYCARD_ML_BATCH_DELAY"] = old


def test_training_is_off_unless_the_operator_turns_it_on(tmp_path: Path) -> None:
    srv = start_server(f"sqlite:///{tmp_path / 'kc.db'}", tmp_path / "server.log")
    try:
        with srv.client() as c:
            assert c.post("/v3/projects", json={"projectId": "no-train-1", "parent": srv.organization}
                          ).status_code == 200
            r = c.post("/v1/projects/no-train-1/jobs", json={"jobId": "t1", "trainingInput": {
                "packageUris": ["gs://b-none/p.py"], "pythonModule": "p", "region": "us-central1"}})
        assert r.status_code == 400 and "--enable-training" in r.text
    finally:
        stop_server(srv)
