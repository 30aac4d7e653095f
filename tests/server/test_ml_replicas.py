"""Online prediction serves models and versions from each replica's in-memory mirror of the store: two
`keycard serve` processes on one database (SQLite file or PostgreSQL); a setDefault, patch or delete on
one replica is what the other predicts with once it has applied that write (the write's
X-Keycard-Revision, sent back as a consistency token, makes it wait for it)."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from conftest import Server, database, serve, start_server, stop_server

PROJECT, BUCKET = "replica-proj-1", "replica-models-1"
X = np.array([[0.0, 0.1], [0.2, 0.0], [1.0, 0.9], [0.9, 1.1]])
Y = np.array([0, 0, 1, 1])


@pytest.fixture(params=["sqlite", "postgresql"])
def replicas(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
             ) -> Iterator[tuple[Server, Server]]:
    monkeypatch.chdir(tmp_path)      # on PostgreSQL both replicas keep object data in ./.keycard/objects
    with database(request.param, tmp_path) as url:
        a = start_server(url, tmp_path / "a.log")
        try:
            b = serve(url, tmp_path / "b.log", a.organization)
            try:
                yield a, b
            finally:
                stop_server(b)
        finally:
            stop_server(a)


def _ok(r: Any) -> Any:
    assert r.status_code == 200, r.text
    return r


def test_the_other_replica_predicts_with_the_new_state(replicas: tuple[Server, Server]) -> None:
    a, b = replicas
    plain, flipped = LogisticRegression().fit(X, Y), LogisticRegression().fit(X, 1 - Y)
    model = f"/v1/projects/{PROJECT}/models/m"
    body = {"instances": X.tolist()}
    with a.client() as ca, b.client() as cb:
        _ok(ca.post("/v3/projects", json={"projectId": PROJECT, "parent": a.organization}))
        _ok(ca.post("/storage/v1/b", params={"project": PROJECT}, json={"name": BUCKET}))
        for prefix, est in (("plain", plain), ("flipped", flipped)):
            buf = io.BytesIO()
            joblib.dump(est, buf)
            _ok(ca.post(f"/upload/storage/v1/b/{BUCKET}/o", params={"uploadType": "media",
                                                                    "name": f"{prefix}/model.joblib"},
                        content=buf.getvalue()))
        _ok(ca.post(f"/v1/projects/{PROJECT}/models", json={"name": "m"}))
        for vid, prefix in (("a", "plain"), ("b", "flipped")):
            op = _ok(ca.post(f"{model}/versions", json={"name": vid, "deploymentUri": f"gs://{BUCKET}/{prefix}/",
                                                        "framework": "SCIKIT_LEARN"})).json()
            assert "error" not in op, op
        want_plain, want_flipped = plain.predict(X).tolist(), flipped.predict(X).tolist()

        def predict_on_b(after: Any, name: str = model) -> Any:
            return cb.post(f"{name}:predict", json=body,
                           headers={"X-Keycard-Revision": after.headers["X-Keycard-Revision"]})

        last = _ok(ca.get(model))
        assert _ok(predict_on_b(last)).json()["predictions"] == want_plain
        switched = _ok(ca.post(f"{model}/versions/b:setDefault", json={}))
        assert _ok(predict_on_b(switched)).json()["predictions"] == want_flipped
        patched = _ok(ca.patch(f"{model}/versions/b", params={"updateMask": "description"},
                               json={"description": "flipped"}))
        assert _ok(predict_on_b(patched)).json()["predictions"] == want_flipped
        back = _ok(ca.post(f"{model}/versions/a:setDefault", json={}))
        assert _ok(predict_on_b(back)).json()["predictions"] == want_plain
        deleted = _ok(ca.delete(f"{model}/versions/b"))
        assert predict_on_b(deleted, f"{model}/versions/b").status_code == 404
        # without a token the follower gets there on its own, promptly
        _ok(ca.post(f"{model}/versions", json={"name": "c", "deploymentUri": f"gs://{BUCKET}/flipped/",
                                               "framework": "SCIKIT_LEARN"}))
        _ok(ca.post(f"{model}/versions/c:setDefault", json={}))
        deadline = time.monotonic() + 30
        while (got := _ok(cb.post(f"{model}:predict", json=body)).json()["predictions"]) != want_flipped:
            assert time.monotonic() < deadline, got
            time.sleep(0.05)
