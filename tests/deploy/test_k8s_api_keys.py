"""The api-keys component (deploy/k8s/components/api-keys): added to either overlay it mounts the
Secret read-only where SWIN_API_KEYS_FILE points, changes nothing else, holds no key itself,
and the result still validates strictly against the Kubernetes API's schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from swin_serve.server.settings import Settings
from tests.deploy.test_k8s import (
    K8S,
    OLDEST_KUBERNETES,
    OVERLAYS,
    container,
    kustomize,
    pod_spec,
    with_component,
)

COMPONENT = K8S / "components" / "api-keys"
SECRET = "swin-api-keys"


@pytest.fixture(scope="module", params=OVERLAYS)
def builds(request, tmp_path_factory) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the overlay, the overlay with the component)."""
    tmp = tmp_path_factory.mktemp(f"{request.param}-api-keys")
    return kustomize(K8S / "overlays" / request.param), kustomize(
        with_component(request.param, COMPONENT, tmp)
    )


def test_the_keys_file_is_the_mounted_secrets_entry(builds):
    _, keyed = builds
    env = {e["name"]: e for e in container(keyed)["env"]}
    path = Path(env["SWIN_API_KEYS_FILE"]["value"])
    assert "SWIN_API_KEYS" not in env  # never the keys themselves in the environment
    (mount,) = [m for m in container(keyed)["volumeMounts"] if m["name"] == "api-keys"]
    assert mount["readOnly"] is True and path.parent == Path(mount["mountPath"])
    (volume,) = [v for v in pod_spec(keyed)["volumes"] if v["name"] == "api-keys"]
    secret = volume["secret"]
    assert secret["secretName"] == SECRET and not secret.get("optional", False)
    assert {"key": "keys", "path": path.name} in secret["items"]
    assert secret["defaultMode"] & 0o007 == 0  # others may not read it
    assert "api_keys_file" in Settings.model_fields  # the variable the server reads


def test_the_component_changes_nothing_else_and_ships_no_key(builds):
    plain, keyed = builds
    assert [o["kind"] for o in keyed] == [o["kind"] for o in plain]  # no Secret in git
    keyed_pod, plain_pod = pod_spec(keyed), pod_spec(plain)
    c = container(keyed)
    c["env"] = [e for e in c["env"] if e["name"] != "SWIN_API_KEYS_FILE"]
    c["volumeMounts"] = [m for m in c["volumeMounts"] if m["name"] != "api-keys"]
    keyed_pod["volumes"] = [v for v in keyed_pod["volumes"] if v["name"] != "api-keys"]
    assert keyed_pod == plain_pod
    assert [o for o in keyed if o["kind"] != "Deployment"] == [
        o for o in plain if o["kind"] != "Deployment"
    ]


def test_with_the_component_the_deployment_validates_strictly(builds):
    import kubernetes_validate

    _, keyed = builds
    (deployment,) = [o for o in keyed if o["kind"] == "Deployment"]
    for version in (OLDEST_KUBERNETES, kubernetes_validate.latest_version()):
        kubernetes_validate.validate(deployment, version, strict=True)


def test_the_docs_secret_example_is_what_the_component_mounts():
    page = (Path(__file__).resolve().parents[2] / "docs" / "production.md").read_text()
    blocks = [b.split("```", 1)[0] for b in page.split("```yaml\n")[1:]]
    secrets = [
        doc
        for block in blocks
        for doc in yaml.safe_load_all(block)
        if isinstance(doc, dict) and doc.get("kind") == "Secret"
    ]
    (secret,) = secrets
    assert secret["metadata"]["name"] == SECRET and set(secret["stringData"]) == {"keys"}
