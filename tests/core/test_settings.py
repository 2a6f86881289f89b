"""Settings read from the environment: what Kubernetes puts there without being asked."""

from __future__ import annotations

import pytest

from fissure.errors import ConfigError
from fissure.settings import PORTS, reload_settings


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    yield
    monkeypatch.undo()
    reload_settings()


def test_kubernetes_service_links_are_not_settings(monkeypatch):
    # the release `fissure` has Services fissure-mlflow and fissure-api: every pod of the namespace
    # gets FISSURE_MLFLOW_PORT=tcp://... and FISSURE_API_PORT=tcp://... (the API crashed on this)
    monkeypatch.setenv("FISSURE_MLFLOW_PORT", "tcp://10.96.190.101:5000")
    monkeypatch.setenv("FISSURE_API_PORT", "tcp://10.96.12.7:8000")
    monkeypatch.setenv("FISSURE_API_SERVICE_PORT", "8000")
    got = reload_settings()
    assert (got.mlflow_port, got.api_port) == (PORTS["mlflow"], PORTS["api"])


def test_a_port_given_as_a_number_still_counts_and_garbage_is_refused(monkeypatch):
    monkeypatch.setenv("FISSURE_MLFLOW_PORT", "5001")
    assert reload_settings().mlflow_port == 5001
    monkeypatch.setenv("FISSURE_MLFLOW_PORT", "http://mlflow:5000")
    with pytest.raises(ConfigError, match="FISSURE_MLFLOW_PORT='http://mlflow:5000'"):
        reload_settings()
