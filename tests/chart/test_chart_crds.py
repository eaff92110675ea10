"""The chart's crds/ is the generator's output too: `make crds` writes both copies, and a stale chart
copy fails here as a stale crds/ does in tests/unit/test_crdgen.py."""

from __future__ import annotations

from pathlib import Path

import yaml

from kubeloop import crdgen

REPO = Path(__file__).resolve().parents[2]
CHART_CRDS = REPO / "charts" / "kubeloop" / "crds"


def test_chart_crds_equal_the_generator_output() -> None:
    expected = crdgen.rendered_chart()
    on_disk = {p.name for p in CHART_CRDS.glob("*.yaml")}
    assert on_disk == set(expected), f"{CHART_CRDS} holds {sorted(on_disk)}: run `make crds`"
    for name, text in expected.items():
        assert (CHART_CRDS / name).read_text() == text, f"{CHART_CRDS / name} is stale: run `make crds`"


def test_chart_crds_are_the_kubeloop_crds_plus_kopf_peering() -> None:
    chart = crdgen.rendered_chart()
    for name, text in crdgen.rendered().items():
        assert chart[name] == text
    peering = yaml.safe_load(chart["clusterkopfpeerings.kopf.dev.yaml"])
    source = [
        d
        for d in yaml.safe_load_all((REPO / "operator" / "deploy" / "kopf-peering.yaml").read_text())
        if d and d["kind"] == "CustomResourceDefinition"
    ]
    assert [peering] == source


def test_default_check_covers_the_chart_copy(tmp_path: Path) -> None:
    crds, chart = tmp_path / "crds", tmp_path / "chart"
    dirs = ["--out", str(crds), "--chart-out", str(chart)]
    assert crdgen.main(dirs) == 0
    assert crdgen.main([*dirs, "--check"]) == 0
    victim = chart / "trainingjobs.yaml"
    victim.write_text(victim.read_text().replace("Maximum number of epochs.", "Epochs."))
    assert crdgen.main([*dirs, "--check"]) == 1
    victim.unlink()
    assert crdgen.main([*dirs, "--check"]) == 1
