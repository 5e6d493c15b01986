"""Auth fetches its own tokens (its own session, no client), works as a requests auth hook,
and pickles as a spec without its token. Against ``ags-etl serve --token-auth`` on 127.0.0.1."""

from __future__ import annotations

import pickle
from collections.abc import Iterator

import pytest
import requests

from ags_etl.arcgis.auth import NoAuth, TokenAuth, UserPasswordAuth
from ags_etl.arcgis.client import ArcGISClient
from ags_etl.errors import TokenError, TransientError
from ags_etl.server.testing import run_server
from tests.layers import write_layer

PASSWORD = "s3cret-pw-4711"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    d = tmp_path_factory.mktemp("layers")
    write_layer(d / "points.geojson", "points", 5)
    with run_server(d, "--token-auth", f"ags:{PASSWORD}") as url:
        yield url


def layer(base: str) -> str:
    return f"{base}/arcgis/rest/services/points/FeatureServer/0"


def test_token_is_discovered_and_fetched_without_any_client(base: str) -> None:
    auth = UserPasswordAuth("ags", PASSWORD)
    token = auth.token(layer(base))
    assert token and auth.tokens_fetched == 1
    assert auth.token_url == f"{base}/arcgis/tokens/generateToken", "found through /rest/info"
    assert auth.token(layer(base)) == token and auth.tokens_fetched == 1, "reused until near expiry"
    assert auth.invalidate() and auth.token(layer(base)) != token and auth.tokens_fetched == 2
    auth.close()


def test_auth_is_a_requests_auth_hook(base: str) -> None:
    auth = UserPasswordAuth("ags", PASSWORD)
    with requests.Session() as session:
        denied = session.get(layer(base), params={"f": "json"}).json()
        allowed = session.get(layer(base), params={"f": "json"}, auth=auth).json()
    assert denied["error"]["code"] == 499
    assert allowed["name"] == "points"


def test_client_uses_the_auth_and_renews_once_on_498(base: str) -> None:
    auth = UserPasswordAuth("ags", PASSWORD)
    with ArcGISClient(auth=auth, retries=0) as client:
        assert client.get(layer(base))["name"] == "points"
        auth._token = "stale-token"  # what a server restart or an early expiry leaves behind
        assert client.get(layer(base))["name"] == "points"
    assert auth.tokens_fetched == 2


def test_wrong_password_names_the_user_never_the_password(base: str) -> None:
    auth = UserPasswordAuth("ags", "wrong-pw-0815")
    with pytest.raises(TokenError, match="refused username 'ags'") as info:
        auth.token(layer(base))
    assert "wrong-pw-0815" not in str(info.value) and "wrong-pw-0815" not in repr(auth)


def test_unreachable_token_service_is_transient_and_quiet() -> None:
    auth = UserPasswordAuth("ags", PASSWORD, token_url="http://127.0.0.1:9/arcgis/tokens/generateToken")
    auth.use_transport(timeout=2.0)
    with pytest.raises(TransientError, match="gave no usable answer") as info:
        auth.token("http://127.0.0.1:9/arcgis/rest/services/x/FeatureServer/0")
    assert PASSWORD not in str(info.value)


def test_a_pickled_auth_is_a_spec_without_token_that_fetches_its_own(base: str) -> None:
    auth = UserPasswordAuth("ags", PASSWORD)
    first = auth.token(layer(base))
    copy = pickle.loads(pickle.dumps(auth))
    assert copy._token is None and copy.tokens_fetched == 1
    second = copy.token(layer(base))
    assert second and second != first and copy.tokens_fetched == 2
    for simple in (NoAuth(), TokenAuth("tok-1")):
        assert pickle.loads(pickle.dumps(simple)).token("http://h/x") == simple.token("http://h/x")
