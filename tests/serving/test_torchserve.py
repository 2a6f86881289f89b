"""The TorchServe supervisor and the MAR checks, without starting TorchServe."""

from __future__ import annotations

import socket
import zipfile

import pytest

from fissure.errors import FissureError


def test_effective_config_keeps_only_packaged_keys_and_sets_addresses(tmp_path):
    from fissure.serving.package import read_properties, write_config
    from fissure.serving.torchserve import TorchServePorts, effective_config

    cfg = write_config(tmp_path / "c.properties", {})
    with cfg.open("a") as f:  # what a tampered storage URI could add
        f.write("enable_model_api=true\nallowed_urls=.*\ninference_address=http://0.0.0.0:80\n"
                "default_workers_per_model=2\n")
    ports = TorchServePorts(inference=1111, management=2222, metrics=3333, grpc_inference=4444, grpc_management=5555)
    props = read_properties(effective_config(cfg, ports, tmp_path, "127.0.0.1", tmp_path))
    assert props["inference_address"] == "http://127.0.0.1:1111"
    assert props["management_address"] == "http://127.0.0.1:2222"
    assert props["metrics_address"] == "http://127.0.0.1:3333"
    assert (props["grpc_inference_port"], props["grpc_management_port"]) == ("4444", "5555")
    assert props["model_store"] == str(tmp_path.resolve())
    assert props["enable_model_api"] == "false" and "allowed_urls" not in props
    assert props["default_workers_per_model"] == "2"  # a key fissure writes is kept


def test_metrics_address_follows_the_serving_host(tmp_path):
    from fissure.serving.package import read_properties
    from fissure.serving.torchserve import TorchServePorts, effective_config

    props = read_properties(effective_config(None, TorchServePorts(), tmp_path, "0.0.0.0", tmp_path))
    assert props["metrics_address"].startswith("http://0.0.0.0:")
    assert props["inference_address"].startswith("http://127.0.0.1:")


def test_missing_java_is_one_clear_line(monkeypatch):
    from fissure.serving import torchserve

    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(FissureError, match="TorchServe needs Java 17: apt-get install openjdk-17-jre-headless"):
        torchserve.find_java()


def test_port_in_use_is_one_clear_line():
    from fissure.serving.torchserve import check_ports

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        with pytest.raises(FissureError, match=f"port {busy} on 127.0.0.1 is already in use; pick another with --x"):
            check_ports([(busy, "127.0.0.1", "--x")])


def _copy_mar(src, dst, extra: dict[str, bytes] | None = None, replace: dict[str, bytes] | None = None):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = (replace or {}).get(item.filename, zin.read(item.filename))
            zout.writestr(item.filename, data)
        for name, data in (extra or {}).items():
            zout.writestr(name, data)
    return dst


@pytest.fixture(scope="module")
def a_mar(built_models):
    base, _, _ = built_models
    return base / "out" / "model-store" / "crack-classifier.mar"


def test_packaged_mar_passes_the_checks(a_mar):
    from fissure.serving.package import read_mar

    assert read_mar(a_mar)["served_name"] == "crack-classifier"


def test_mar_with_an_extra_module_is_refused(a_mar, tmp_path):
    from fissure.serving.package import read_mar

    bad = _copy_mar(a_mar, tmp_path / "x.mar", extra={"fissure/__init__.py": b"import os; os.system('id')"})
    with pytest.raises(FissureError, match=r"not a fissure MAR \(unexpected files \['fissure/__init__.py'\]\)"):
        read_mar(bad)


def test_mar_with_another_handler_is_refused(a_mar, tmp_path):
    from fissure.serving.package import HANDLER_NAME, read_mar

    bad = _copy_mar(a_mar, tmp_path / "x.mar", replace={HANDLER_NAME: b"import os\nos.system('id')\n"})
    with pytest.raises(FissureError, match="its handler is not fissure's"):
        read_mar(bad)
