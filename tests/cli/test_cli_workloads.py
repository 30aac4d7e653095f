"""The `keycard` CLI over HTTP against a live server: service accounts and keys (a key file as the CLI's
credentials), deny policies, storage buckets/objects/cp, ai-platform models/versions/predict/jobs."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cli.kc import kc, kcj
from server.conftest import KEYCARD, Server, free_port, start_server, stop_server

PROJECT = "cli-work-1"
BUCKET = "cli-work-bucket-1"
SA = f"runner-1@{PROJECT}.iam.gserviceaccount.com"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    d = tmp_path_factory.mktemp("cliw")
    srv = start_server(f"sqlite:///{d / 'keycard.db'}", d / "server.log")
    kcj(srv, "projects", "create", PROJECT, "--organization", srv.organization.split("/")[1])
    yield srv
    stop_server(srv)


def test_service_accounts_keys_and_key_file_credentials(server: Server, tmp_path: Path) -> None:
    env = {"KEYCARD_PROJECT": PROJECT}
    made = kcj(server, "iam", "service-accounts", "create", "runner-1", "--display-name", "Runner", env=env)
    assert made["email"] == SA
    listed = kcj(server, "iam", "service-accounts", "list", "--filter", "displayName=Runner", env=env)
    assert [a["email"] for a in listed] == [SA]
    assert kcj(server, "iam", "service-accounts", "describe", SA)["displayName"] == "Runner"
    key_file = tmp_path / "key.json"
    meta = kcj(server, "iam", "service-accounts", "keys", "create", str(key_file), "--iam-account", SA)
    key = json.loads(key_file.read_text())
    assert key["client_email"] == SA and key["token_uri"].startswith(server.url)
    assert key_file.stat().st_mode & 0o077 == 0
    key_id = meta["name"].rsplit("/", 1)[1]
    assert key_id in [k["name"] for k in kcj(server, "iam", "service-accounts", "keys", "list", "--iam-account", SA,
                                              "--managed-by", "user")]
    # the key file is the CLI's credential: the account sees the project once it may
    denied = kc(server, "projects", "describe", PROJECT, user=None, env={"GOOGLE_APPLICATION_CREDENTIALS":
                                                                          str(key_file)})
    assert denied.returncode == 1 and "resourcemanager.projects.get" in denied.stderr
    kcj(server, "projects", "add-iam-policy-binding", PROJECT, "--member", f"serviceAccount:{SA}", "--role",
        "roles/browser")
    seen = kcj(server, "projects", "describe", PROJECT, "--key-file", str(key_file), user=None)
    assert seen["projectId"] == PROJECT
    # policies on the account itself
    pol = kcj(server, "iam", "service-accounts", "add-iam-policy-binding", SA, "--member", "user:bob@example.com",
              "--role", "roles/iam.serviceAccountUser")
    assert any(b["role"] == "roles/iam.serviceAccountUser" and "user:bob@example.com" in b["members"]
               for b in pol["bindings"])
    kcj(server, "iam", "service-accounts", "disable", SA)
    assert kcj(server, "iam", "service-accounts", "describe", SA).get("disabled") is True
    off = kc(server, "projects", "describe", PROJECT, "--key-file", str(key_file), user=None)
    assert off.returncode == 1                                  # a disabled account's key signs in no more
    kcj(server, "iam", "service-accounts", "enable", SA)
    kcj(server, "iam", "service-accounts", "keys", "delete", key_id, "--iam-account", SA)
    gone = kc(server, "projects", "describe", PROJECT, "--key-file", str(key_file), user=None)
    assert gone.returncode == 1 and ("401" in gone.stderr or "UNAUTHENTICATED" in gone.stderr)


def test_deny_policies_and_troubleshoot_names_the_rule(server: Server, tmp_path: Path) -> None:
    f = tmp_path / "deny.yaml"
    f.write_text("displayName: no deletes\nrules:\n- denyRule:\n    deniedPrincipals: "
                 "['principal://goog/subject/bob@example.com']\n    deniedPermissions: "
                 "['cloudresourcemanager.googleapis.com/projects.delete']\n")
    made = kcj(server, "iam", "deny-policies", "create", "no-deletes", "--project", PROJECT, "--policy-file", str(f))
    assert made["name"].endswith("/denypolicies/no-deletes")
    assert [p["name"] for p in kcj(server, "iam", "deny-policies", "list", "--project", PROJECT)] == [made["name"]]
    got = kcj(server, "iam", "deny-policies", "describe", "no-deletes", "--project", PROJECT)
    assert got["rules"][0]["denyRule"]["deniedPermissions"] == ["cloudresourcemanager.googleapis.com/projects.delete"]
    kcj(server, "projects", "add-iam-policy-binding", PROJECT, "--member", "user:bob@example.com", "--role",
        "roles/owner")
    r = kc(server, "iam", "troubleshoot", "bob@example.com", "resourcemanager.projects.delete", f"projects/{PROJECT}",
           "--format", "json")
    assert r.returncode == 1
    answer = json.loads(r.stdout)
    assert answer["denyPolicyExplanation"]["denyAccessState"] == "DENY_ACCESS_STATE_DENIED"
    assert answer["keycardRemedy"]["deniedBy"]["policy"].endswith("no-deletes")
    tree = kc(server, "iam", "troubleshoot", "bob@example.com", "resourcemanager.projects.delete",
              f"projects/{PROJECT}")
    assert "deny policies: DENIED" in tree.stdout and "no allow grant would help" in tree.stdout
    kcj(server, "iam", "deny-policies", "delete", "no-deletes", "--project", PROJECT)
    assert kcj(server, "iam", "deny-policies", "list", "--project", PROJECT) == []


def test_storage_buckets_objects_cp(server: Server, tmp_path: Path) -> None:
    env = {"KEYCARD_PROJECT": PROJECT}
    assert kcj(server, "storage", "buckets", "create", f"gs://{BUCKET}", env=env)["name"] == BUCKET
    assert BUCKET in [b["name"] for b in kcj(server, "storage", "buckets", "list", env=env)]
    src = tmp_path / "data.bin"
    src.write_bytes(bytes(range(256)) * 5000)
    up = kcj(server, "storage", "cp", str(src), f"gs://{BUCKET}/dir/")
    assert up["name"] == "dir/data.bin" and int(up["size"]) == src.stat().st_size
    listed = kcj(server, "storage", "ls", f"gs://{BUCKET}/dir/")
    assert [o["name"] for o in listed] == ["dir/data.bin"]
    assert kcj(server, "storage", "objects", "describe", f"gs://{BUCKET}/dir/data.bin")["size"] == up["size"]
    back = tmp_path / "back.bin"
    assert kcj(server, "storage", "cp", f"gs://{BUCKET}/dir/data.bin", str(back))["bytes"] == src.stat().st_size
    assert back.read_bytes() == src.read_bytes()
    pol = kcj(server, "storage", "buckets", "add-iam-policy-binding", f"gs://{BUCKET}", "--member",
              "user:bob@example.com", "--role", "roles/storage.objectViewer")
    assert any("user:bob@example.com" in b["members"] for b in pol["bindings"])
    stranger = kc(server, "storage", "cp", f"gs://{BUCKET}/dir/data.bin", str(tmp_path / "x"),
                  user="mallory@example.com")
    assert stranger.returncode == 1 and "storage.objects.get" in stranger.stderr
    assert not (tmp_path / "x").exists()
    kcj(server, "storage", "rm", f"gs://{BUCKET}/dir/data.bin")
    assert kcj(server, "storage", "ls", f"gs://{BUCKET}") == []


def test_ai_platform_models_versions_predict_jobs(server: Server, tmp_path: Path) -> None:
    import joblib
    from sklearn.linear_model import LogisticRegression
    env = {"KEYCARD_PROJECT": PROJECT}
    bucket = "cli-models-1"
    kcj(server, "storage", "buckets", "create", f"gs://{bucket}", env=env)
    model_file = tmp_path / "model.joblib"
    joblib.dump(LogisticRegression().fit([[0.0], [1.0], [2.0], [3.0]], [0, 0, 1, 1]), model_file)
    kcj(server, "storage", "cp", str(model_file), f"gs://{bucket}/m1/v1/model.joblib")
    assert kcj(server, "ai-platform", "models", "create", "m1", env=env)["name"] == f"projects/{PROJECT}/models/m1"
    assert [m["name"] for m in kcj(server, "ai-platform", "models", "list", env=env)] == \
        [f"projects/{PROJECT}/models/m1"]
    version = kcj(server, "ai-platform", "versions", "create", "v1", "--model", "m1", "--origin",
                  f"gs://{bucket}/m1/v1/", "--framework", "scikit-learn", env=env)
    assert version["state"] == "READY", version
    assert kcj(server, "ai-platform", "models", "describe", "m1", env=env)["defaultVersion"]["name"].endswith("/v1")
    instances = tmp_path / "in.json"
    instances.write_text("[0.0]\n[3.0]\n")
    out = kcj(server, "ai-platform", "predict", "--model", "m1", "--json-instances", str(instances), env=env)
    assert out["predictions"] == [0, 1]
    pol = kcj(server, "ai-platform", "models", "add-iam-policy-binding", "m1", "--project", PROJECT, "--member",
              "user:bob@example.com", "--role", "roles/ml.modelUser")
    assert any(b["role"] == "roles/ml.modelUser" for b in pol["bindings"])
    kcj(server, "storage", "cp", str(instances), f"gs://{bucket}/batch/in.json")
    job = kcj(server, "ai-platform", "jobs", "submit-prediction", "job_1", "--model", "m1", "--input-paths",
              f"gs://{bucket}/batch/in.json", "--output-path", f"gs://{bucket}/batch/out", "--wait", env=env)
    assert job["state"] == "SUCCEEDED", job
    assert [j["jobId"] for j in kcj(server, "ai-platform", "jobs", "list", env=env)] == ["job_1"]
    results = [o["name"] for o in kcj(server, "storage", "ls", f"gs://{bucket}/batch/out")]
    assert any("prediction.results" in n for n in results)


def test_metadata_server_credentials(server: Server, tmp_path: Path) -> None:
    """On a 'VM' (GCE_METADATA_HOST pointing at `keycard metadata-server`), the CLI calls as the attached account."""
    email = kcj(server, "iam", "service-accounts", "create", "mds-cli-1", "--project", PROJECT)["email"]
    kcj(server, "projects", "add-iam-policy-binding", PROJECT, "--member", f"serviceAccount:{email}", "--role",
        "roles/browser")
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "KEYCARD_TOKEN": server.token("alice@example.com")}
    with (tmp_path / "mds.log").open("wb") as fh:
        proc = subprocess.Popen([*KEYCARD, "metadata-server", "--service-account", email, "--endpoint", server.url,
                                 "--port", str(port)], stdout=fh, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "mds.log").read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/", headers={"Metadata-Flavor": "Google"}).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "mds.log").read_text()
            time.sleep(0.2)
        host = f"127.0.0.1:{port}"
        vm = {"GCE_METADATA_HOST": host, "GCE_METADATA_IP": host}
        assert kcj(server, "projects", "describe", PROJECT, user=None, env=vm)["projectId"] == PROJECT
        denied = kc(server, "projects", "delete", PROJECT, user=None, env=vm)
        assert denied.returncode == 1 and "resourcemanager.projects.delete" in denied.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=30)
