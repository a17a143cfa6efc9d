"""Fuzz the HTTP API against its own OpenAPI schema (schemathesis): no request may yield a 5xx,
every status must be documented and every body must match its schema."""
from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
pytest.importorskip("fastapi")

from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import (  # noqa: E402
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def api_url(tmp_path_factory):
    from unirec_dist.serving.app import create_app
    from unirec_dist.serving.recommender import Recommender
    from unirec_dist.serving.server import serve_in_thread
    from unirec_dist.serving.synthetic import make_synthetic_bundle

    # numeric raw ids ("1".."300"), so that generated integers and digit strings hit known ids and
    # the fuzzer reaches the success paths too, not only the 4xx ones
    bundle = make_synthetic_bundle(tmp_path_factory.mktemp("fuzz") / "bundle", n_items=300, dim=8, n_users=20,
                                   history_len=6, max_len=10, item_prefix="", user_prefix="")
    rec = Recommender.from_bundle(bundle, max_k=50, max_history=64)
    with serve_in_thread(create_app(rec)) as url:
        yield url


@pytest.fixture(scope="module")
def api_schema(api_url):
    return schemathesis.openapi.from_url(api_url + "/openapi.json")


# Schemathesis' pytest plugin does not run under pytest 9 (it reads Function._nodeid), so the
# operations' hypothesis strategies are driven directly: positive (schema-valid) and negative
# (schema-violating) requests for every operation, a bounded number of each, derandomized.
@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_api_never_errors(api_schema, mode):
    from collections import Counter

    from hypothesis import given
    from schemathesis.generation import GenerationMode

    seen: Counter = Counter()
    ops = [r.ok() for r in api_schema.get_all_operations()]
    assert {f"{o.method.upper()} {o.path}" for o in ops} >= {"POST /recommend", "POST /explain", "GET /health",
                                                             "GET /metadata"}
    for op in ops:
        if mode == "negative" and op.method.upper() == "GET":
            continue  # nothing to violate: no parameters, no body

        @given(case=op.as_strategy(generation_mode=GenerationMode(mode)))
        @settings(max_examples=60, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case):
            resp = case.call_and_validate(checks=CHECKS)
            seen[(op.path, resp.status_code)] += 1

        run()
    assert not [key for key in seen if key[1] >= 500]
    if mode == "positive":
        # the fuzzer reached real answers, not only rejections
        assert seen[("/recommend", 200)] > 0 and seen[("/explain", 200)] > 0, dict(seen)
