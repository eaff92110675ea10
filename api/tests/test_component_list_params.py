"""A list's query parameters the API server refuses, against the real API server: the refusal (its status,
reason and message kept) names the parameter it is about, in the message and in ``details.causes``. The
API server's own messages do not ("found '=', expected: ',' or 'end of string'")."""

from __future__ import annotations

import pytest
from api_cluster import ApiEnv, Tenants, expect

pytestmark = pytest.mark.component

BAD = [
    ({"labelSelector": "a=b=c"}, "labelSelector"),
    ({"labelSelector": "suite in ("}, "labelSelector"),
    ({"labelSelector": "!!"}, "labelSelector"),
    ({"fieldSelector": "spec.task=x"}, "fieldSelector"),
    ({"fieldSelector": "nonsense"}, "fieldSelector"),
    ({"continue": "not-a-token"}, "continue"),
    ({"labelSelector": "a=b", "fieldSelector": "spec.task=x"}, "fieldSelector"),
    ({"labelSelector": "a=b=c", "fieldSelector": "metadata.name=x"}, "labelSelector"),
    ({"labelSelector": "a=b", "continue": "not-a-token"}, "continue"),
]


@pytest.mark.parametrize(("params", "field"), BAD, ids=[f"{f}-{i}" for i, (_, f) in enumerate(BAD)])
def test_a_refused_list_parameter_is_named(
    api_env: ApiEnv, tenants: Tenants, params: dict[str, str], field: str
) -> None:
    ns = tenants.a.namespace
    with api_env.client(tenants.a.headers) as c:
        body = expect(c.get(f"/api/v1/namespaces/{ns}/trainingjobs", params=params), 400, field, "BadRequest")
        assert body["message"].startswith(f"{field}: "), body
        assert len(body["message"]) > len(field) + 2  # the API server's reason is kept after it


@pytest.mark.parametrize("selector", ["a=b=c", "!!"])
def test_a_status_stream_with_a_refused_selector_names_it(
    api_env: ApiEnv, tenants: Tenants, selector: str
) -> None:
    ns = tenants.a.namespace
    with api_env.client(tenants.a.headers) as c:
        r = c.get(f"/api/v1/watch/namespaces/{ns}/trainingjobs", params={"labelSelector": selector})
        body = expect(r, 400, "labelSelector", "BadRequest")
        assert body["message"].startswith("labelSelector: "), body
