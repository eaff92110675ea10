"""schemathesis against the live OpenAPI document of the facade, on the real API server, MinIO and MLflow:
every operation gets positive (schema-conforming) and negative (schema-violating) cases, sent with a
tenant's credentials; not one response may be a 5xx.

The suite runs a bounded variant (KUBELOOP_API_FUZZ_EXAMPLES per operation and mode, default 6: about
600 cases, capped at KUBELOOP_API_FUZZ_SECONDS=60 after which each remaining operation gets 2 cases
per mode); ``make fuzz-api`` runs 40 without a cap (well over 1,000 cases). Status streams are read
only until their status line. Positive cases use the tenant's namespace, so they reach Kubernetes,
MinIO and MLflow rather than stop at a 403.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from api_cluster import ApiEnv, Tenant

pytestmark = pytest.mark.component

EXAMPLES = int(os.environ.get("KUBELOOP_API_FUZZ_EXAMPLES", "6"))
# Past this many seconds the remaining operations get 2 cases per mode, so the in-suite run stays
# bounded on a busy machine; 0 = no limit (make fuzz-api).
SECONDS = float(os.environ.get("KUBELOOP_API_FUZZ_SECONDS", "60"))
FULL_RUN = 1000  # cases `make fuzz-api` must reach (KUBELOOP_API_FUZZ_EXAMPLES=40)


@pytest.fixture(scope="module")
def fuzz_tenant(api_env: ApiEnv) -> Iterator[Tenant]:
    """A namespace of its own for the generated objects, where no pod may run (a zero-pod quota), so
    nothing the fuzzer creates or resumes starts a process."""
    from api_cluster import create_namespace, delete_namespace, no_pods, tenant

    with api_env.kube.api_client() as api:
        ns = create_namespace(api, "kl-fuzz")
        try:
            no_pods(api, ns)
            t = tenant(api, ns)
            api_env.remember(t.token)
            yield t
        finally:
            delete_namespace(api, ns)


def test_schemathesis_finds_no_server_error(api_env: ApiEnv, fuzz_tenant: Tenant) -> None:
    import requests
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    ns = fuzz_tenant.namespace
    schema = schemathesis.openapi.from_url(f"{api_env.url}/openapi.json")
    auth = {"Authorization": f"Bearer {fuzz_tenant.token}"}
    statuses: Counter[int] = Counter()
    server_errors: list[str] = []
    per_operation: dict[str, int] = {}
    session = requests.Session()
    t0 = time.monotonic()
    operations = [r.ok() for r in schema.get_all_operations()]
    assert len(operations) >= 40
    for op in operations:
        n = EXAMPLES if not SECONDS or time.monotonic() - t0 < SECONDS else min(EXAMPLES, 2)
        count = 0
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            pinned: dict[str, Any] | None = None
            if mode == GenerationMode.POSITIVE and "{namespace}" in op.path:
                pinned = {"namespace": ns}
            strategy = op.as_strategy(generation_mode=mode, headers=auth, path_parameters=pinned)

            @settings(
                max_examples=n,
                deadline=None,
                database=None,
                derandomize=True,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=strategy)
            def run(case: Any) -> None:
                nonlocal count
                if case.operation.path.startswith("/api/v1/watch/"):
                    # A status stream never ends: its status line is what counts, then hang up.
                    kwargs = case.as_transport_kwargs(base_url=api_env.url)
                    with session.request(**kwargs, stream=True, timeout=(10, 60)) as r:
                        code, text = r.status_code, "" if r.status_code < 400 else r.text
                else:
                    resp = case.call(base_url=api_env.url, session=session, timeout=60)
                    code, text = resp.status_code, resp.text
                count += 1
                statuses[code] += 1
                if code >= 500:
                    server_errors.append(
                        f"{case.method} {case.formatted_path} {case.query or ''} -> {code} {text[:300]}"
                    )

            try:
                run()
            except Unsatisfiable:
                # Nothing of this operation can be made invalid (e.g. no parameters at all).
                assert mode == GenerationMode.NEGATIVE, op.path
        per_operation[f"{op.method.upper()} {op.path}"] = count
    total = sum(statuses.values())
    seconds = time.monotonic() - t0
    print(
        f"schemathesis: {total} cases over {len(operations)} operations in {seconds:.0f} s "
        f"(loadavg {os.getloadavg()[0]:.2f}); 5xx: {len(server_errors)}; statuses: {dict(sorted(statuses.items()))}"
    )
    assert not server_errors, "\n".join(server_errors[:20])
    assert total >= 4 * len(operations)  # every operation got cases
    if EXAMPLES >= 40:
        assert total >= FULL_RUN
