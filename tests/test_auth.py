"""Authentication and permissions, as the contract's "Authentication" section
states them: login and its cookie, logout, stream tickets, the order in which
credentials are read, which tokens are refused, RS256/ES256 public keys, the
user / publisher / admin roles, the type of every claim, the audience and
issuer checks, and query-string credentials kept out of logs.

Every check goes over a real socket to a real server (see ``conftest.py``).
"""

from __future__ import annotations

import base64
import datetime
import email.utils
import hashlib
import hmac
import json
import logging
import re
import time
import urllib.parse
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from core.domain.auth import new_ticket
from models import queries
from tests.conftest import SECRET

pytestmark = pytest.mark.timeout(30)
#: Every test here runs through both doors (tests/conftest.py, ``door``).
BOTH_DOORS = True

LOGIN = "/api/v1/auth/login"
LOGOUT = "/api/v1/auth/logout"
TICKET = "/api/v1/auth/stream-ticket"
EVENTS = "/api/v1/events"
PASSWORD = "correct horse battery staple"
SNAKE_CASE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")


# -- helpers -------------------------------------------------------------------


def notifications_path(user_id: str, suffix: str = "") -> str:
    """The notifications collection of ``user_id`` (plus ``/suffix``)."""
    path = f"/api/v1/users/{urllib.parse.quote(user_id, safe='')}/notifications"
    return f"{path}/{suffix}" if suffix else path


def assert_error(status: int, body: Any, expected: int) -> None:
    """``status`` is ``expected`` and ``body`` is the contract's error shape."""
    assert status == expected, body
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"code", "message"}, body
    assert isinstance(error["code"], str) and SNAKE_CASE.match(error["code"]), body
    assert isinstance(error["message"], str) and error["message"], body


def assert_unauthorized(status: int, headers: Any, body: Any) -> None:
    """A 401 with the error body and a ``WWW-Authenticate: Bearer`` challenge."""
    assert_error(status, body, 401)
    assert headers.get("WWW-Authenticate", "").startswith("Bearer"), dict(headers)


def assert_stream_refused(client: Any, expected: int) -> None:
    """A stream request answered ``expected`` with the JSON error body."""
    body = json.loads(client.body_bytes) if client.body_bytes else None
    if expected == 401:
        assert_unauthorized(client.status, client.headers, body)
    else:
        assert_error(client.status, body, expected)


def parse_set_cookie(header: str) -> tuple[str, str, dict[str, str]]:
    """``(name, value, {lower-cased attribute: value})`` of one Set-Cookie header."""
    first, *rest = [part.strip() for part in header.split(";")]
    name, _, value = first.partition("=")
    attributes = {}
    for part in rest:
        key, _, attr_value = part.partition("=")
        attributes[key.lower()] = attr_value
    return name, value, attributes


def access_token_cookie(headers: Any) -> tuple[str, dict[str, str]]:
    """The value and attributes of the one ``access_token`` Set-Cookie."""
    cookies = [parse_set_cookie(h) for h in headers.get_list("Set-Cookie")]
    matching = [(value, attrs) for name, value, attrs in cookies if name == "access_token"]
    assert len(matching) == 1, headers.get_list("Set-Cookie")
    return matching[0]


def cookie(token: str) -> dict[str, str]:
    """A request header sending ``token`` as the ``access_token`` cookie."""
    return {"Cookie": f"access_token={token}"}


def b64url(data: bytes) -> str:
    """Unpadded base64url, as JWS uses."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def forge(claims: dict[str, Any], alg: str = "HS256", key: bytes = SECRET.encode(), header: dict[str, Any] | None = None) -> str:
    """A JWT built by hand, so that PyJWT's own guards cannot stop a test
    from making the tokens an attacker would send (``alg: none``, an HMAC
    keyed with a public key, a ``kid`` naming another key).

    :param header: more header fields (``kid``...).
    """
    fields = {"alg": alg, "typ": "JWT", **(header or {})}
    signing_input = b64url(json.dumps(fields).encode()) + "." + b64url(json.dumps(claims).encode())
    if alg == "none":
        return signing_input + "."
    digest = {"HS256": hashlib.sha256, "HS512": hashlib.sha512}[alg]
    return signing_input + "." + b64url(hmac.new(key, signing_input.encode(), digest).digest())


def claims(**overrides: Any) -> dict[str, Any]:
    """Valid claims for ``alice`` (an override of ``None`` drops that claim)."""
    values = {"sub": "alice", "role": "user", "exp": int(time.time()) + 600, **overrides}
    return {name: value for name, value in values.items() if value is not None}


async def create_user(server: Any, user_id: str, role: str = "user") -> None:
    """A local account with :data:`PASSWORD`."""
    await server.app.service.create_user(user_id, PASSWORD, role)


async def login(server: Any, user_id: str, password: str = PASSWORD):
    """``(status, headers, json, raw)`` of a login."""
    return await server.request("POST", LOGIN, {"userId": user_id, "password": password})


async def login_token(server: Any, user_id: str, password: str = PASSWORD) -> str:
    """The token a successful login hands out."""
    status, _, body, raw = await login(server, user_id, password)
    assert status == 200, raw
    return body["token"]


async def ticket_for(server: Any, user_id: str, role: str = "user") -> str:
    """A fresh stream ticket for ``user_id``."""
    status, _, body, raw = await server.request("POST", TICKET, as_user=user_id, role=role)
    assert status == 200, raw
    return body["ticket"]


def query(**params: str) -> str:
    """A URL-encoded query string."""
    return urllib.parse.urlencode(params)


async def get_list(server: Any, user_id: str, headers: dict[str, str] | None = None, **kwargs: Any):
    """``GET`` the notifications of ``user_id``."""
    return await server.request("GET", notifications_path(user_id), headers=headers, **kwargs)


# -- fixtures ------------------------------------------------------------------


@pytest.fixture
def secure_server(make_server):
    """A server started with ``cookie_secure=True`` (HTTPS deployments)."""
    return make_server(cookie_secure=True)


@pytest.fixture
def demo_server(make_server):
    """A server started with ``demo=True`` (demo users, password ``demo``)."""
    return make_server(demo=True)


@pytest.fixture(params=["RS256", "ES256"])
def key_pair(request) -> tuple[str, Any]:
    """``(algorithm, private key)`` for each supported public-key family."""
    return request.param, new_private_key(request.param)


def new_private_key(algorithm: str) -> Any:
    """A fresh RSA (RS256) or P-256 (ES256) private key."""
    if algorithm == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def key_server(make_server, tmp_path, key_pair):
    """A server that only verifies, with the public half of ``key_pair``."""
    _, private_key = key_pair
    pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    path = tmp_path / "jwt-public.pem"
    path.write_bytes(pem)
    server = make_server(jwt_secret="", jwt_public_key=str(path))
    server.public_pem = pem
    return server


# -- login ---------------------------------------------------------------------


async def test_login_returns_bearer_token_and_identity(server):
    await create_user(server, "alice")
    status, _, body, raw = await login(server, "alice")
    assert status == 200, raw
    assert set(body) == {"token", "tokenType", "expiresIn", "userId", "role"}
    assert body["tokenType"] == "Bearer"
    assert body["userId"] == "alice"
    assert body["role"] == "user"
    assert isinstance(body["expiresIn"], int) and body["expiresIn"] > 0
    status, _, _, raw = await get_list(server, "alice", {"Authorization": "Bearer " + body["token"]})
    assert status == 200, raw


async def test_login_reports_the_accounts_role(server):
    await create_user(server, "pub", role="publisher")
    status, _, body, raw = await login(server, "pub")
    assert status == 200, raw
    assert body["role"] == "publisher"


@pytest.mark.parametrize("user_id, role", [("empresaabc_123", "user"), ("demo_publisher", "publisher")])
async def test_demo_users_log_in_with_password_demo(demo_server, user_id, role):
    status, _, body, raw = await login(demo_server, user_id, "demo")
    assert status == 200, raw
    assert (body["userId"], body["role"]) == (user_id, role)


async def test_login_sets_httponly_lax_root_cookie_without_secure(server):
    await create_user(server, "alice")
    status, headers, body, raw = await login(server, "alice")
    assert status == 200, raw
    value, attributes = access_token_cookie(headers)
    assert value == body["token"]
    assert "httponly" in attributes
    assert attributes.get("samesite", "").lower() == "lax"
    assert attributes.get("path") == "/"
    assert "secure" not in attributes


async def test_login_cookie_is_secure_with_cookie_secure(secure_server):
    await create_user(secure_server, "alice")
    status, headers, _, raw = await login(secure_server, "alice")
    assert status == 200, raw
    _, attributes = access_token_cookie(headers)
    assert "secure" in attributes
    assert "httponly" in attributes


async def test_login_with_wrong_password_is_401(server):
    await create_user(server, "alice")
    status, headers, body, _ = await login(server, "alice", "wrong password")
    assert_error(status, body, 401)
    assert "access_token" not in " ".join(headers.get_list("Set-Cookie"))


async def test_login_of_unknown_user_is_401_like_a_wrong_password(server):
    await create_user(server, "alice")
    status, _, unknown, _ = await login(server, "nobody")
    assert_error(status, unknown, 401)
    _, _, wrong, _ = await login(server, "alice", "wrong password")
    # One answer for both, so the endpoint does not reveal which ids exist.
    assert unknown == wrong


@pytest.mark.parametrize(
    "body",
    [{}, {"userId": "alice"}, {"password": PASSWORD}, {"userId": "", "password": PASSWORD},
     {"userId": 7, "password": PASSWORD}, {"userId": "alice", "password": None}],
    ids=["empty", "no-password", "no-user-id", "empty-user-id", "numeric-user-id", "null-password"],
)
async def test_login_with_missing_or_invalid_fields_is_422(server, body):
    status, _, error, _ = await server.request("POST", LOGIN, body)
    assert_error(status, error, 422)


async def test_login_with_malformed_json_is_400(server):
    status, _, body, _ = await server.request("POST", LOGIN, b'{"userId": "alice",', {"Content-Type": "application/json"})
    assert_error(status, body, 400)


async def test_login_with_form_body_is_415(server):
    await create_user(server, "alice")
    form = urllib.parse.urlencode({"userId": "alice", "password": PASSWORD})
    status, _, body, _ = await server.request("POST", LOGIN, form, {"Content-Type": "application/x-www-form-urlencoded"})
    assert_error(status, body, 415)


# -- the cookie and logout ----------------------------------------------------------


async def test_login_cookie_authenticates_rest_calls(server):
    await create_user(server, "alice")
    token = await login_token(server, "alice")
    status, _, body, raw = await get_list(server, "alice", cookie(token))
    assert status == 200, raw
    assert body["items"] == []


async def test_login_cookie_authenticates_the_stream(server):
    await create_user(server, "alice")
    token = await login_token(server, "alice")
    client = await server.live_stream("alice", headers=cookie(token), auth=False)
    created = await server.notify("alice", "via cookie")
    assert (await client.next_event()).json() == created
    client.close()


async def test_logout_is_204_and_expires_the_cookie(server):
    await create_user(server, "alice")
    token = await login_token(server, "alice")
    status, headers, _, raw = await server.request("POST", LOGOUT, headers={**cookie(token), "Origin": server.origin})
    assert status == 204, raw
    assert raw == b""
    value, attributes = access_token_cookie(headers)
    assert value in ("", '""')
    assert attributes.get("path") == "/"
    expires = attributes.get("expires")
    expired = attributes.get("max-age") == "0" or (
        expires is not None and email.utils.parsedate_to_datetime(expires) < datetime.datetime.now(datetime.UTC)
    )
    assert expired, attributes


# -- stream tickets ------------------------------------------------------------


async def test_stream_ticket_requires_a_credential(server):
    status, headers, body, _ = await server.request("POST", TICKET)
    assert_unauthorized(status, headers, body)


async def test_stream_ticket_is_short_lived(server):
    status, _, body, raw = await server.request("POST", TICKET, as_user="alice")
    assert status == 200, raw
    assert set(body) == {"ticket", "expiresIn"}
    assert isinstance(body["ticket"], str) and body["ticket"]
    assert isinstance(body["expiresIn"], int) and 0 < body["expiresIn"] <= 60


async def test_stream_ticket_opens_its_users_stream(server):
    ticket = await ticket_for(server, "alice")
    client = await server.stream("alice", query=query(ticket=ticket), auth=False)
    assert client.status == 200, client.body_bytes
    ready = await client.next_event()
    assert ready.type == "ready" and ready.json()["userId"] == "alice"
    client.close()


async def test_stream_ticket_cannot_be_used_twice(server):
    ticket = await ticket_for(server, "alice")
    first = await server.live_stream("alice", query=query(ticket=ticket), auth=False)
    second = await server.stream("alice", query=query(ticket=ticket), auth=False)
    assert_stream_refused(second, 401)
    first.close()


async def test_stream_ticket_does_not_open_another_users_stream(server):
    ticket = await ticket_for(server, "alice")
    client = await server.stream("bob", query=query(ticket=ticket), auth=False)
    assert_stream_refused(client, 403)


async def test_expired_stream_ticket_is_401(server):
    ticket, digest = new_ticket()
    # Stored as the service stores tickets, but already past its expiry:
    # deterministic, no waiting for a real ticket to age.
    expired_ms = int(time.time() * 1000) - 1000
    await server.app.runner.write(queries.store_ticket, digest, "alice", "user", expired_ms, None)
    client = await server.stream("alice", query=query(ticket=ticket), auth=False)
    assert_stream_refused(client, 401)


async def test_expired_stream_tickets_are_deleted_and_live_ones_kept(server):
    now_ms = int(time.time() * 1000)
    for expires_ms in (now_ms - 1000, now_ms - 1):
        await server.app.runner.write(queries.store_ticket, new_ticket()[1], "alice", "user", expires_ms, None)
    live = await ticket_for(server, "alice")
    assert await server.app.service.prune_tickets() == 2
    client = await server.live_stream("alice", query=query(ticket=live), auth=False)
    client.close()


def test_expired_stream_tickets_are_deleted_every_minute(server):
    # Not only with the hourly retention run: tickets live 30 s.
    timer = server.app._prune_tickets
    assert timer is not None and timer.is_running()
    assert timer.callback_time <= 60_000


async def test_unknown_stream_ticket_is_401(server):
    client = await server.stream("alice", query=query(ticket="not-a-ticket"), auth=False)
    assert_stream_refused(client, 401)


# -- where credentials are read -------------------------------------------------


@pytest.mark.parametrize("where", ["rest", "stream"])
async def test_request_without_credential_is_401(server, where):
    if where == "rest":
        status, headers, body, _ = await get_list(server, "alice")
        assert_unauthorized(status, headers, body)
    else:
        assert_stream_refused(await server.stream("alice", auth=False), 401)


async def test_authorization_header_wins_over_cookie(server):
    alice, bob = server.token("alice"), server.token("bob")
    status, _, _, raw = await get_list(server, "alice", {"Authorization": f"Bearer {alice}", **cookie(bob)})
    assert status == 200, raw
    status, _, body, _ = await get_list(server, "alice", {"Authorization": f"Bearer {bob}", **cookie(alice)})
    assert_error(status, body, 403)


@pytest.mark.parametrize("authorization", ["Bearer not-a-jwt", "Basic YWxpY2U6cHc=", "Bearer"])
async def test_bad_authorization_header_is_not_rescued_by_a_good_cookie(server, authorization):
    headers = {"Authorization": authorization, **cookie(server.token("alice"))}
    status, response_headers, body, _ = await get_list(server, "alice", headers)
    assert_unauthorized(status, response_headers, body)


async def test_cookie_wins_over_query_token_on_the_stream(server):
    # Were bob's ?token= read, alice's stream would answer 403.
    client = await server.live_stream(
        "alice", headers=cookie(server.token("alice")), query=query(token=server.token("bob")), auth=False
    )
    client.close()


async def test_ticket_wins_over_query_token_on_the_stream(server):
    ticket = await ticket_for(server, "alice")
    client = await server.live_stream("alice", query=query(ticket=ticket, token=server.token("bob")), auth=False)
    client.close()


async def test_query_token_opens_the_stream(server):
    client = await server.live_stream("alice", query=query(token=server.token("alice")), auth=False)
    created = await server.notify("alice", "via query token")
    assert (await client.next_event()).json() == created
    client.close()


@pytest.mark.parametrize("param", ["token", "ticket"])
async def test_query_credentials_are_ignored_by_rest_endpoints(server, param):
    value = server.token("alice") if param == "token" else await ticket_for(server, "alice")
    status, headers, body, _ = await server.request("GET", notifications_path("alice") + "?" + query(**{param: value}))
    assert_unauthorized(status, headers, body)


# -- which tokens are refused ---------------------------------------------------

REFUSED_TOKENS = {
    "hs512-same-secret": lambda: forge(claims(), alg="HS512"),
    "alg-none": lambda: forge(claims(), alg="none"),
    "wrong-secret": lambda: forge(claims(), key=b"another-secret-" + b"y" * 20),
    "expired": lambda: forge(claims(exp=int(time.time()) - 5)),
    "no-exp": lambda: forge(claims(exp=None)),
    "exp-not-a-number": lambda: forge(claims(exp="tomorrow")),
    # kid injection: the header names a "key" (a file that reads empty, an
    # attacker's key id) and the HMAC is made with what that would yield.
    "kid-empty-file-key": lambda: forge(claims(), key=b"", header={"kid": "../../../../../../dev/null"}),
    "kid-of-another-key": lambda: forge(claims(), key=b"attacker-secret-" + b"z" * 20, header={"kid": "attacker-1"}),
    # Algorithm confusion the other way round: an RS256 token on a server
    # that only has an HS256 secret.
    "rs256-on-a-secret-server": lambda: jwt.encode(claims(), new_private_key("RS256"), algorithm="RS256"),
    "no-sub": lambda: forge(claims(sub=None)),
    "empty-sub": lambda: forge(claims(sub="")),
    "unknown-role": lambda: forge(claims(role="superuser")),
    "tampered-payload": lambda: tamper(forge(claims(sub="bob")), claims()),
    "garbage": lambda: "this.is.not-a-jwt",
}


def tamper(token: str, new_claims: dict[str, Any]) -> str:
    """``token`` with its payload replaced and its signature kept."""
    header, _, signature = token.split(".")
    return f"{header}.{b64url(json.dumps(new_claims).encode())}.{signature}"


@pytest.mark.parametrize("where", ["rest", "stream"])
@pytest.mark.parametrize("kind", sorted(REFUSED_TOKENS))
async def test_invalid_token_is_401(server, kind, where):
    token = REFUSED_TOKENS[kind]()
    if where == "rest":
        status, headers, body, _ = await get_list(server, "alice", {"Authorization": f"Bearer {token}"})
        assert_unauthorized(status, headers, body)
    else:
        client = await server.stream("alice", query=query(token=token), auth=False)
        assert_stream_refused(client, 401)


#: Subjects no user can have.  Signed with the right key they used to
#: reach the database as a user id, which failed the request with a 500
#: (a lone surrogate everywhere; NUL or over 128 characters on PostgreSQL).
IMPOSSIBLE_SUBJECTS = {"nul": "al\x00ice", "lone-surrogate": "\ud800", "too-long": "a" * 129, "slash": "a/b"}


@pytest.mark.parametrize("kind", sorted(IMPOSSIBLE_SUBJECTS))
async def test_a_signed_token_whose_subject_no_user_can_have_is_401(server, no_error_logged, kind):
    token = forge(claims(sub=IMPOSSIBLE_SUBJECTS[kind]))
    status, headers, body, _ = await server.request("POST", TICKET, headers={"Authorization": f"Bearer {token}"})
    assert_unauthorized(status, headers, body)
    assert body["error"]["code"] == "invalid_token"


#: Claims of the wrong type in tokens signed with the right key.  PyJWT lets
#: most through (it reads the times with int(), which takes "9999999999"
#: and true); a numeric-string exp then failed the request with a 500.
BADLY_TYPED_CLAIMS = {
    "exp-numeric-string": {"exp": "9999999999"},
    "exp-true": {"exp": True},
    "exp-null": {"exp": None},
    "exp-nan": {"exp": float("nan")},
    "exp-infinity": {"exp": float("inf")},
    "exp-too-large-for-a-float": {"exp": 10**400},
    "exp-list": {"exp": [9999999999]},
    "exp-object": {"exp": {"seconds": 9999999999}},
    "sub-number": {"sub": 42},
    "sub-list": {"sub": ["alice"]},
    "role-null": {"role": None},
    "role-number": {"role": 1},
    "role-list": {"role": ["admin"]},
    "role-object": {"role": {"name": "admin"}},
    "iat-numeric-string": {"iat": "0"},
    "iat-true": {"iat": True},
    "iat-null": {"iat": None},
    "nbf-numeric-string": {"nbf": "0"},
    "nbf-list": {"nbf": [0]},
    "nbf-nan": {"nbf": float("nan")},
}

#: Every way a token reaches the server: a create, a REST read, and the
#: stream by header and by ``?token=`` (each through both doors: the
#: module runs with ``BOTH_DOORS``).
WAYS = ("post", "rest", "stream-header", "stream-query")


async def answer_to_token(server: Any, token: str, way: str) -> tuple[int, Any, Any]:
    """``(status, headers, JSON body or None)`` of alice's request carrying ``token`` the ``way`` given."""
    auth = {"Authorization": f"Bearer {token}"}
    if way == "rest":
        status, headers, body, _ = await get_list(server, "alice", auth)
        return status, headers, body
    if way == "post":
        status, headers, body, _ = await server.request("POST", notifications_path("alice"),
                                                        {"type": "info", "message": "hi"}, headers=auth)
        return status, headers, body
    if way == "stream-header":
        client = await server.stream("alice", headers=auth, auth=False)
    else:
        client = await server.stream("alice", query=query(token=token), auth=False)
    body = json.loads(client.body_bytes) if client.status != 200 else None
    client.close()
    return client.status, client.headers, body


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize("kind", sorted(BADLY_TYPED_CLAIMS))
async def test_a_signed_token_with_a_claim_of_the_wrong_type_is_401_invalid_token(server, no_error_logged, kind, way):
    token = forge({**claims(), **BADLY_TYPED_CLAIMS[kind]})
    status, headers, body = await answer_to_token(server, token, way)
    assert_unauthorized(status, headers, body)
    assert body["error"]["code"] == "invalid_token"


@pytest.mark.parametrize("way", WAYS)
async def test_a_token_with_float_times_is_accepted(server, no_error_logged, way):
    now = time.time()
    token = forge(claims(exp=now + 600.5, iat=now - 1.5, nbf=now - 1.5))
    status, _, body = await answer_to_token(server, token, way)
    assert status in (200, 201), body


# -- audience and issuer (--jwt-audience, --jwt-issuer) ----------------------------

AUDIENCE = "notify-api"
ISSUER = "https://id.example"

#: ``aud`` and ``iss`` a server with ``--jwt-audience`` and ``--jwt-issuer`` accepts.
ACCEPTED_SCOPES = {
    "aud-string": {"aud": AUDIENCE, "iss": ISSUER},
    "aud-list-naming-it": {"aud": ["other-api", AUDIENCE], "iss": ISSUER},
}

#: ... and those it refuses (401 ``invalid_token``).
REFUSED_SCOPES = {
    "no-aud": {"iss": ISSUER},
    "other-aud": {"aud": "other-api", "iss": ISSUER},
    "empty-aud": {"aud": "", "iss": ISSUER},
    "aud-list-without-it": {"aud": ["other-api"], "iss": ISSUER},
    "aud-list-with-a-number": {"aud": [AUDIENCE, 7], "iss": ISSUER},
    "aud-number": {"aud": 7, "iss": ISSUER},
    "aud-object": {"aud": {AUDIENCE: True}, "iss": ISSUER},
    "no-iss": {"aud": AUDIENCE},
    "other-iss": {"aud": AUDIENCE, "iss": "https://elsewhere.example"},
    "iss-list": {"aud": AUDIENCE, "iss": [ISSUER]},
    "iss-number": {"aud": AUDIENCE, "iss": 1},
}


@pytest.fixture
def scoped_server(make_server):
    """A server started with ``--jwt-audience`` and ``--jwt-issuer``."""
    return make_server(jwt_audience=AUDIENCE, jwt_issuer=ISSUER)


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize("kind", sorted(ACCEPTED_SCOPES))
async def test_a_token_for_the_configured_audience_and_issuer_is_accepted(scoped_server, no_error_logged, kind, way):
    token = forge({**claims(), **ACCEPTED_SCOPES[kind]})
    status, _, body = await answer_to_token(scoped_server, token, way)
    assert status in (200, 201), body


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize("kind", sorted(REFUSED_SCOPES))
async def test_a_token_for_another_audience_or_issuer_is_401_invalid_token(scoped_server, no_error_logged, kind, way):
    token = forge({**claims(), **REFUSED_SCOPES[kind]})
    status, headers, body = await answer_to_token(scoped_server, token, way)
    assert_unauthorized(status, headers, body)
    assert body["error"]["code"] == "invalid_token"


@pytest.mark.parametrize("way", WAYS)
async def test_login_issues_tokens_for_the_configured_audience_and_issuer(scoped_server, no_error_logged, way):
    await create_user(scoped_server, "alice")
    token = await login_token(scoped_server, "alice")
    issued = jwt.decode(token, SECRET, algorithms=["HS256"], audience=AUDIENCE, issuer=ISSUER)
    assert (issued["aud"], issued["iss"]) == (AUDIENCE, ISSUER)
    status, _, body = await answer_to_token(scoped_server, token, way)
    assert status in (200, 201), body


async def test_login_cookie_works_with_audience_and_issuer_set(scoped_server, no_error_logged):
    await create_user(scoped_server, "alice")
    token = await login_token(scoped_server, "alice")
    status, _, _, raw = await get_list(scoped_server, "alice", cookie(token))
    assert status == 200, raw


async def test_a_token_naming_an_audience_is_refused_where_none_is_configured(server, no_error_logged):
    # RFC 7519 4.1.3: a recipient that is not among the token's audiences
    # must refuse it; a server without --jwt-audience is in none.
    token = forge(claims(aud=AUDIENCE))
    status, headers, body, _ = await get_list(server, "alice", {"Authorization": f"Bearer {token}"})
    assert_unauthorized(status, headers, body)
    assert body["error"]["code"] == "invalid_token"


async def test_a_token_naming_an_issuer_is_accepted_where_none_is_configured(server, no_error_logged):
    status, _, _, raw = await get_list(server, "alice", {"Authorization": f"Bearer {forge(claims(iss=ISSUER))}"})
    assert status == 200, raw


async def test_hand_built_hs256_token_is_accepted(server):
    """The positive control of the forged tokens above."""
    status, _, _, raw = await get_list(server, "alice", {"Authorization": f"Bearer {forge(claims())}"})
    assert status == 200, raw


async def test_kid_header_does_not_choose_the_key(server):
    """One key per algorithm: a ``kid`` is ignored, so a token signed with the
    configured secret passes whatever it names (issuers add one routinely),
    and one signed with anything else fails (``REFUSED_TOKENS`` above)."""
    token = forge(claims(), header={"kid": "some-issuers-key-2024"})
    status, _, _, raw = await get_list(server, "alice", {"Authorization": f"Bearer {token}"})
    assert status == 200, raw


async def test_token_without_role_claim_acts_as_user(server):
    token = forge(claims(role=None))
    status, _, _, raw = await get_list(server, "alice", {"Authorization": f"Bearer {token}"})
    assert status == 200, raw
    status, _, body, _ = await get_list(server, "bob", {"Authorization": f"Bearer {token}"})
    assert_error(status, body, 403)


async def test_token_of_user_unknown_locally_is_accepted(server):
    status, _, body, raw = await get_list(server, "external_42", as_user="external_42")
    assert status == 200, raw
    assert body["items"] == []


# -- public keys (RS256 / ES256) -------------------------------------------------


async def test_public_key_server_accepts_token_signed_with_private_key(key_server, key_pair):
    algorithm, private_key = key_pair
    token = jwt.encode(claims(), private_key, algorithm=algorithm)
    status, _, _, raw = await get_list(key_server, "alice", {"Authorization": f"Bearer {token}"})
    assert status == 200, raw


async def test_public_key_server_refuses_token_signed_with_another_key(key_server, key_pair):
    algorithm, _ = key_pair
    token = jwt.encode(claims(), new_private_key(algorithm), algorithm=algorithm)
    status, headers, body, _ = await get_list(key_server, "alice", {"Authorization": f"Bearer {token}"})
    assert_unauthorized(status, headers, body)


async def test_public_key_server_refuses_hs256_keyed_with_the_public_key(key_server):
    # The classic algorithm confusion: an HMAC whose "secret" is the public PEM.
    token = forge(claims(), alg="HS256", key=key_server.public_pem)
    status, headers, body, _ = await get_list(key_server, "alice", {"Authorization": f"Bearer {token}"})
    assert_unauthorized(status, headers, body)


@pytest.mark.parametrize("header", ["jwk", "jku", "kid"])
async def test_public_key_server_ignores_a_key_named_by_the_token(key_server, key_pair, header):
    """A token that brings its own key (an embedded ``jwk``, a ``jku`` URL, a
    ``kid``) and is signed with it: the server verifies with its own key only."""
    algorithm, _ = key_pair
    attacker = new_private_key(algorithm)
    family = jwt.algorithms.RSAAlgorithm if algorithm == "RS256" else jwt.algorithms.ECAlgorithm
    named = {
        "jwk": json.loads(family.to_jwk(attacker.public_key())),
        "jku": "http://127.0.0.1:9/attacker-keys.json",
        "kid": "attacker-1",
    }[header]
    token = jwt.encode(claims(), attacker, algorithm=algorithm, headers={header: named})
    status, headers, body, _ = await get_list(key_server, "alice", {"Authorization": f"Bearer {token}"})
    assert_unauthorized(status, headers, body)


async def test_public_key_server_refuses_alg_none(key_server):
    status, headers, body, _ = await get_list(key_server, "alice", {"Authorization": f"Bearer {forge(claims(), alg='none')}"})
    assert_unauthorized(status, headers, body)


# -- roles ---------------------------------------------------------------------

OTHER_USERS_NOTIFICATION_CALLS = {
    "list": ("GET", "", None),
    "get-one": ("GET", "{id}", None),
    "unread-count": ("GET", "unread-count", None),
    "mark-read": ("PATCH", "{id}", {"read": True}),
    "read-all": ("POST", "read-all", None),
    "delete": ("DELETE", "{id}", None),
}


@pytest.mark.parametrize("call", sorted(OTHER_USERS_NOTIFICATION_CALLS))
async def test_user_cannot_touch_another_users_notifications(server, call):
    method, suffix, body = OTHER_USERS_NOTIFICATION_CALLS[call]
    created = await server.notify("bob", "bob's own")
    path = notifications_path("bob", suffix.format(id=created["notificationId"]))
    status, _, error, _ = await server.request(method, path, body, as_user="alice")
    assert_error(status, error, 403)
    # Nothing changed for bob.
    _, _, page, _ = await get_list(server, "bob", as_user="bob")
    assert [item["notificationId"] for item in page["items"]] == [created["notificationId"]]
    assert page["items"][0]["readAt"] is None


async def test_user_cannot_notify_another_user(server):
    body = {"type": "info", "message": "spoofed"}
    status, _, error, _ = await server.request("POST", notifications_path("bob"), body, as_user="alice")
    assert_error(status, error, 403)


async def test_user_cannot_open_another_users_stream(server):
    client = await server.stream("bob", as_user="alice")
    assert_stream_refused(client, 403)


async def test_user_cannot_publish_events(server):
    body = {"event": "invoice.paid", "userIds": ["alice"], "data": {}}
    status, _, error, _ = await server.request("POST", EVENTS, body, as_user="alice")
    assert_error(status, error, 403)


async def test_admin_may_read_any_users_notifications(server):
    created = await server.notify("bob", "for bob")
    status, _, page, raw = await get_list(server, "bob", as_user="root", role="admin")
    assert status == 200, raw
    assert [item["notificationId"] for item in page["items"]] == [created["notificationId"]]


async def test_admin_may_open_any_users_stream(server):
    client = await server.live_stream("bob", as_user="root", role="admin")
    created = await server.notify("bob", "watched by admin")
    assert (await client.next_event()).json() == created
    client.close()


async def test_publisher_may_notify_any_user(server):
    body = {"type": "success", "message": "from billing"}
    status, headers, created, raw = await server.request("POST", notifications_path("bob"), body, as_user="billing", role="publisher")
    assert status == 201, raw
    assert created["userId"] == "bob"
    assert headers["Location"].endswith("/" + created["notificationId"])


async def test_publisher_may_publish_events_for_anyone(server):
    body = {"event": "invoice.paid", "userIds": ["alice", "bob"], "data": {"invoice": 7}}
    status, _, result, raw = await server.request("POST", EVENTS, body, as_user="billing", role="publisher")
    assert status == 202, raw
    assert result == {"published": 2}


async def test_publisher_cannot_read_other_users_notifications(server):
    await server.notify("bob", "private")
    status, _, error, _ = await get_list(server, "bob", as_user="billing", role="publisher")
    assert_error(status, error, 403)


async def test_publisher_cannot_open_other_users_stream(server):
    client = await server.stream("bob", as_user="billing", role="publisher")
    assert_stream_refused(client, 403)


# -- query-string credentials stay out of the logs -------------------------------


def logged_text(caplog: pytest.LogCaptureFixture) -> str:
    """Every captured record: its message and any formatted traceback."""
    formatter = logging.Formatter()
    parts = [caplog.text]
    for record in caplog.records:
        parts.append(record.getMessage())
        if record.exc_info:
            parts.append(formatter.formatException(record.exc_info))
        if record.exc_text:
            parts.append(record.exc_text)
    return "\n".join(parts)


async def test_query_credentials_never_appear_in_logs(server, caplog):
    caplog.set_level(logging.DEBUG)
    token = server.token("alice")
    ticket = await ticket_for(server, "alice")
    secrets = [token, ticket, "SECRETTOKEN"]
    by_token = await server.live_stream("alice", query=query(token=token), auth=False)
    by_ticket = await server.live_stream("alice", query=query(ticket=ticket), auth=False)
    assert_stream_refused(await server.stream("alice", query=query(ticket=ticket), auth=False), 401)
    assert_stream_refused(await server.stream("alice", query=query(token="SECRETTOKEN"), auth=False), 401)
    assert_stream_refused(await server.stream("bob", query=query(token=token), auth=False), 403)
    status, headers, body, _ = await server.request("GET", notifications_path("alice") + "?" + query(token=token))
    assert_unauthorized(status, headers, body)
    # End both streams from the server side so their access lines are written.
    server.manager.shutdown()
    assert await by_token.wait_closed()
    assert await by_ticket.wait_closed()
    assert caplog.records, "the server logged nothing at DEBUG: the check would prove nothing"
    text = logged_text(caplog)
    for secret in secrets:
        assert secret not in text


async def test_server_error_log_omits_query_credentials(server, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)

    def broken_verify(token: str):
        raise RuntimeError("verification backend exploded")

    monkeypatch.setattr(server.app.deps.tokens, "verify", broken_verify)
    client = await server.stream("alice", query=query(token="SECRETTOKEN"), auth=False)
    assert_error(client.status, json.loads(client.body_bytes), 500)
    assert any(record.exc_info for record in caplog.records), "the failure left no traceback to inspect"
    assert "SECRETTOKEN" not in logged_text(caplog)
