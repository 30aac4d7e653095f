"""Loading deployed model files and running online predictions.

Frameworks:
- ``SCIKIT_LEARN``: ``model.joblib`` (or ``model.pkl``), loaded with joblib. **Trusted code**: a joblib
  file is a pickle and runs code when loaded. keycard loads it only from its own object store, from
  the version's ``deploymentUri``, which only principals with ``storage.objects.create`` on that
  bucket can write and only principals with ``ml.versions.create`` can deploy — treat both
  permissions as code-execution rights on the server.
- ``ONNX``: ``model.onnx``, run with onnxruntime (no code execution).

Loaded models are cached per version (name and etag); a redeploy or a new etag loads afresh.
"""

from __future__ import annotations

import io
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["FILES", "FRAMEWORKS", "LoadedModel", "ModelCache", "PredictionError", "load_model"]

FRAMEWORKS = ("SCIKIT_LEARN", "ONNX")
FILES = {"SCIKIT_LEARN": ("model.joblib", "model.pkl"), "ONNX": ("model.onnx",)}
MAX_INSTANCES = 10_000


class PredictionError(ValueError):
    """Bad instances or a model that cannot answer them (the caller's input: a 400)."""


@dataclass(frozen=True, slots=True)
class LoadedModel:
    framework: str
    predict: Callable[[Sequence[Any]], list[Any]]


def _rows(instances: object) -> list[Any]:
    if not isinstance(instances, list) or not instances:
        raise PredictionError("'instances' must be a non-empty list")
    if len(instances) > MAX_INSTANCES:
        raise PredictionError(f"at most {MAX_INSTANCES} instances per request")
    return instances


def _plain(value: Any) -> Any:
    """numpy results → JSON values (NaN/inf are not JSON: refuse rather than emit invalid JSON)."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        raise PredictionError("the model produced a non-finite number")
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _sklearn(data: bytes) -> LoadedModel:
    import joblib  # type: ignore[import-untyped]
    import numpy as np
    model = joblib.load(io.BytesIO(data))
    if not hasattr(model, "predict"):
        raise ValueError("the joblib file does not hold an estimator with predict()")

    def predict(instances: Sequence[Any]) -> list[Any]:
        try:
            x = np.asarray(_rows(instances), dtype=float)
        except (ValueError, TypeError) as e:
            raise PredictionError(f"instances must be lists of numbers of equal length: {e}") from None
        if x.ndim == 1:
            x = x.reshape(-1, 1)
        try:
            out = model.predict(x)
        except ValueError as e:
            raise PredictionError(str(e).splitlines()[0][:300]) from None
        return list(_plain(out))

    return LoadedModel("SCIKIT_LEARN", predict)


def _onnx(data: bytes) -> LoadedModel:
    import numpy as np
    import onnxruntime as ort  # type: ignore[import-untyped]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ValueError("keycard serves ONNX models with exactly one input")
    name = inputs[0].name
    elem = inputs[0].type
    dtype = np.int64 if "int64" in elem else np.float64 if "double" in elem else np.float32
    lock = threading.Lock()

    def predict(instances: Sequence[Any]) -> list[Any]:
        try:
            x = np.asarray(_rows(instances), dtype=dtype)
        except (ValueError, TypeError) as e:
            raise PredictionError(f"instances must be lists of numbers of equal length: {e}") from None
        try:
            with lock:
                out = session.run(None, {name: x})
        except Exception as e:  # onnxruntime raises its own exception types for shape/type mismatches
            raise PredictionError(str(e).splitlines()[0][:300]) from None
        return list(_plain(out[0]))

    return LoadedModel("ONNX", predict)


def load_model(framework: str, data: bytes) -> LoadedModel:
    """Load a model file; ValueError with a reason if it is not a model of that framework."""
    try:
        if framework == "SCIKIT_LEARN":
            return _sklearn(data)
        if framework == "ONNX":
            return _onnx(data)
    except ValueError:
        raise
    except Exception as e:  # unpickling or parsing a corrupt file fails in many ways
        raise ValueError(f"cannot load the {framework} model file: {type(e).__name__}: {str(e)[:200]}") from None
    raise ValueError(f"framework {framework!r} is not served; use one of {', '.join(FRAMEWORKS)}")


class ModelCache:
    """Loaded models per (version name, etag); a bounded number, least recently used evicted."""

    def __init__(self, limit: int = 64) -> None:
        self._limit = limit
        self._models: dict[tuple[str, str], LoadedModel] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str]) -> LoadedModel | None:
        with self._lock:
            m = self._models.pop(key, None)
            if m is not None:
                self._models[key] = m
            return m

    def put(self, key: tuple[str, str], model: LoadedModel) -> None:
        with self._lock:
            for old in [k for k in self._models if k[0] == key[0]]:
                del self._models[old]
            self._models[key] = model
            while len(self._models) > self._limit:
                del self._models[next(iter(self._models))]
