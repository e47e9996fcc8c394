"""What the service checks in a bundle's manifest before it serves it (`contract.bundle.check_compatible`),
and a bundle without a scorer: served in retrieval order, not refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.main import create_app
from app.services.model_bundle import load_bundle
from app.services.ranking import History, user_vectors
from contract.bundle import check_compatible, read_manifest
from contract.features import HISTORY_SNAPSHOT, N_TIME_BUCKETS
from tests.app.conftest import make_settings
from tests.fixtures.tiny_bundle import person_id


def edited(bundle_dir: Path, out: Path, **changes: object) -> Path:
    shutil.copytree(bundle_dir, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest.update(changes)
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def test_each_mismatch_is_named(bundle_dir: Path) -> None:
    m = read_manifest(bundle_dir)
    assert check_compatible(m, profile_max_events=HISTORY_SNAPSHOT) == []
    bad = m.model_copy(update={"n_time_buckets": N_TIME_BUCKETS - 1, "scorer_extras": ["dot"]})
    problems = " | ".join(check_compatible(bad))
    assert "time buckets" in problems and "features" in problems and problems.count("re-export") == 2
    short = check_compatible(m, profile_max_events=HISTORY_SNAPSHOT - 1)
    assert len(short) == 1 and "XREC_PROFILE_MAX_EVENTS" in short[0]
    renamed = m.model_copy(deep=True)
    renamed.models["user_encoder"].inputs = ["hist_vecs"]
    assert "user_encoder takes" in check_compatible(renamed)[0]
    no_user = m.model_copy(update={"models": {k: v for k, v in m.models.items() if k != "user_encoder"}})
    assert "no user_encoder" in check_compatible(no_user)[0]


def test_the_service_refuses_a_bundle_with_other_time_buckets(bundle_dir: Path, tmp_path: Path,
                                                               redis_prefix: str) -> None:
    other = edited(bundle_dir, tmp_path / "b", n_time_buckets=N_TIME_BUCKETS + 4)
    settings: Settings = make_settings(other, redis_prefix, tmp_path / "events")
    try:
        load_bundle(other, settings)
    except Exception as e:  # BundleError, with the reason
        assert "time buckets" in str(e) and "re-export" in str(e)
    else:
        raise AssertionError("a bundle with other time buckets was loaded")


def test_a_bundle_without_a_scorer_serves_the_retrieval_order(bundle_dir: Path, tmp_path: Path,
                                                              redis_prefix: str) -> None:
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    models = {k: v for k, v in manifest["models"].items() if k != "scorer"}
    files = {k: v for k, v in manifest["files"].items() if k != "scorer.onnx"}
    plain = edited(bundle_dir, tmp_path / "plain", models=models, files=files)
    (plain / "scorer.onnx").unlink()
    settings = make_settings(plain, redis_prefix, tmp_path / "events")
    with TestClient(create_app(settings)) as client:
        r = client.post("/v1/recommend", json={"person_id": person_id("alice"), "platform": "kitchen", "k": 8},
                        headers={"X-API-Key": "test-key-1"})
        assert r.status_code == 200, r.text
        items = r.json()["items"]
        bundle = client.app.state.xrec.bundle
        assert bundle.models.scorer is None and bundle.models.knn_candidates >= 0
        scores = np.array([i["score"] for i in items])
        assert len(items) == 8 and np.all(np.diff(scores) <= 1e-6)
        # The scores are the retrieval scores u·v of the served items.
        rows = [bundle.catalog.row_of[i["item_id"]] for i in items]
        ids, plats, ts = bundle.snapshot.events(person_id("alice"))
        u = user_vectors(bundle.models, bundle.catalog, [History.from_ids(bundle.catalog, ids, plats, ts)],
                         [bundle.platform_of["kitchen"]])[0]
        np.testing.assert_allclose(bundle.catalog.vectors[rows] @ u, scores, rtol=1e-5, atol=1e-6)
