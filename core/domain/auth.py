"""Tokens, stream tickets, passwords and permission checks.

Everything here ends in a :class:`Principal` or a domain error; nothing
here knows about HTTP.  Secrets are never logged: error messages name what
is wrong with a credential, never the credential.

No secret is compared with ``==`` (whose time depends on how many leading
bytes match, which lets an attacker guess a value byte by byte): an HS256
signature is checked by PyJWT with ``hmac.compare_digest``, a password's
scrypt hash here with ``hmac.compare_digest``, and a stream ticket or an
already verified token is found by its SHA-256 digest, so whatever compares
bytes compares digests of the guess, which tell nothing about the secret.
A token's header chooses nothing but the algorithm, and only among the
configured ones: ``kid``, ``jku``, ``jwk`` and ``x5u`` are ignored, there
being one key per algorithm.  See docs/SECURITY.md.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import hmac
import math
import secrets
import time
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from core.domain.errors import AuthError, Forbidden, Unavailable
from core.domain.validation import USER_ID

ROLES = ("user", "publisher", "admin")

#: Single-use stream tickets live this long (the contract allows <= 60 s).
TICKET_TTL = 30

#: Verified tokens remembered; a publisher sends the same token on every
#: request, and PyJWT's verification costs more than the rest of a publish.
VERIFIED_CACHE_SIZE = 10_000


@dataclasses.dataclass(frozen=True)
class Principal:
    """Who is calling: a user id, a role, and when the credential expires."""

    user_id: str
    role: str = "user"
    expires_at: float | None = None

    @property
    def is_admin(self) -> bool:
        """Admins may act for anyone."""
        return self.role == "admin"


class TokenService:
    """Issues and verifies JWTs with exactly the configured algorithm family.

    :param secret: HS256 secret; also what :meth:`issue` signs with.
    :param public_key_pem: an RSA (RS256) or EC (ES256) public key.
    :param clock: wall clock in seconds (tests may replace it).
    :param audience: ``--jwt-audience``: when set, a token's ``aud`` (a
        string, or a list of them) must name it, and :meth:`issue` sets it.
    :param issuer: ``--jwt-issuer``: when set, a token's ``iss`` must be
        it, and :meth:`issue` sets it.
    """

    def __init__(
        self, secret: str = "", public_key_pem: bytes = b"", clock=time.time, audience: str = "", issuer: str = ""
    ) -> None:
        if not secret and not public_key_pem:
            raise ValueError("a JWT secret or public key is required")
        self._clock = clock
        self._audience = audience or None
        self._issuer = issuer or None
        self._required = ["sub", "exp"] + (["aud"] if audience else []) + (["iss"] if issuer else [])
        self._keys: dict[str, Any] = {}
        if secret:
            self._keys["HS256"] = secret
        if public_key_pem:
            key = load_pem_public_key(public_key_pem)
            if isinstance(key, rsa.RSAPublicKey):
                self._keys["RS256"] = key
            elif isinstance(key, ec.EllipticCurvePublicKey):
                self._keys["ES256"] = key
            else:
                raise ValueError("the public key must be RSA (RS256) or EC (ES256)")
        self._secret = secret
        # sha256(token) -> principal, oldest first.  Keyed by a digest so a
        # lookup never compares a guessed token with a real one byte by byte.
        self._verified: collections.OrderedDict[bytes, Principal] = collections.OrderedDict()

    def issue(self, user_id: str, role: str = "user", ttl: int = 3600) -> str:
        """A signed HS256 token for ``user_id`` valid for ``ttl`` seconds.

        :raises Unavailable: only a public key is configured, so this
            server cannot sign.
        """
        if not self._secret:
            raise Unavailable("this server verifies tokens but has no secret to sign them", code="signing_unavailable")
        now = int(self._clock())
        claims: dict[str, Any] = {"sub": user_id, "role": role, "iat": now, "exp": now + int(ttl)}
        # This server's own tokens must pass its own checks.
        if self._audience is not None:
            claims["aud"] = self._audience
        if self._issuer is not None:
            claims["iss"] = self._issuer
        return jwt.encode(claims, self._secret, algorithm="HS256")

    def verify(self, token: str) -> Principal:
        """The principal a token stands for.

        A token verified before is recognised by its digest (its expiry is
        still checked on every use); only valid tokens are remembered, so
        garbage cannot fill the cache.

        :raises AuthError: malformed, wrongly signed, of another algorithm,
            expired, missing ``sub``/``exp``, a claim of the wrong type, an
            unknown role, or not for the configured audience or issuer.
        """
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        known = self._verified.get(digest)
        if known is not None:
            if known.expires_at is not None and known.expires_at <= self._clock():
                del self._verified[digest]
                raise AuthError("the token has expired", code="token_expired")
            return known
        principal = self._verify(token)
        self._verified[digest] = principal
        if len(self._verified) > VERIFIED_CACHE_SIZE:
            self._verified.popitem(last=False)
        return principal

    def _verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError("the token is malformed", code="invalid_token") from None
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in self._keys:
            raise AuthError("the token's algorithm is not accepted", code="invalid_token")
        key = self._keys[algorithm]
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self._audience,
                issuer=self._issuer,
                # The times are checked below, after their types: PyJWT
                # reads them with int(), which takes "9999999999" and true.
                options={"require": self._required, "verify_exp": False, "verify_iat": False, "verify_nbf": False},
                leeway=0,
            )
        except jwt.PyJWTError:
            raise AuthError("the token is invalid", code="invalid_token") from None
        subject = claims["sub"]
        role = claims.get("role", "user")
        # The subject becomes a user id in queries and stored tickets: one no
        # user can have (NUL, a lone surrogate, over 128 characters) would
        # make the database fail the request with a 500.
        if not isinstance(subject, str) or not USER_ID.match(subject) or not isinstance(role, str) or role not in ROLES:
            raise AuthError("the token's subject or role is invalid", code="invalid_token")
        if not all(_is_time(claims[name]) for name in ("exp", "iat", "nbf") if name in claims):
            raise AuthError("the token's exp, iat and nbf must be numbers", code="invalid_token")
        now = self._clock()
        if claims["exp"] <= now:
            raise AuthError("the token has expired", code="token_expired")
        if claims.get("nbf", now) > now or claims.get("iat", now) > now:
            raise AuthError("the token is not valid yet", code="invalid_token")
        return Principal(user_id=subject, role=role, expires_at=float(claims["exp"]))


def _is_time(value: Any) -> bool:
    """Whether a claim is a usable NumericDate: an int or float, finite, not a bool.

    Anything else (a numeric string, ``true``, NaN, an integer too large
    for a float) would fail a comparison or ``float()`` with a 500.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


# -- passwords ------------------------------------------------------------

_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


def hash_password(password: str) -> str:
    """Hash with scrypt (standard library), salted: ``scrypt$n$r$p$salt$hash``."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, dklen=32, **_SCRYPT)
    return "scrypt${n}${r}${p}${salt}${digest}".format(salt=salt.hex(), digest=digest.hex(), **_SCRYPT)


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored``, compared in constant time."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = bytes.fromhex(digest)
        candidate = hashlib.scrypt(
            password.encode("utf-8"), salt=bytes.fromhex(salt), dklen=32, n=int(n), r=int(r), p=int(p)
        )
    except (ValueError, TypeError):
        return False
    # Bytes, not hex text: compare_digest refuses non-ASCII str, and a
    # corrupt stored hash must read as "no match", not fail the login.
    return hmac.compare_digest(candidate, expected)


#: Compared against when the user does not exist, so a login takes as long
#: for an unknown user as for a wrong password (no user enumeration by time).
DUMMY_HASH = hash_password(secrets.token_hex(8))


# -- stream tickets ---------------------------------------------------------


def new_ticket() -> tuple[str, str]:
    """A fresh ticket and the hash that is stored in its place."""
    ticket = secrets.token_urlsafe(32)
    return ticket, hash_ticket(ticket)


def hash_ticket(ticket: str) -> str:
    """What the database keeps of a ticket: a stolen table grants nothing."""
    return hashlib.sha256(ticket.encode("utf-8")).hexdigest()


# -- permissions ------------------------------------------------------------


def require_reader(principal: Principal, user_id: str) -> None:
    """Reading or changing ``user_id``'s notifications and stream: the user or an admin."""
    if principal.user_id != user_id and not principal.is_admin:
        raise Forbidden("you may only read your own notifications")


def require_creator(principal: Principal, user_id: str) -> None:
    """Creating a notification for ``user_id``: the user, a publisher, or an admin."""
    if principal.user_id != user_id and principal.role not in ("publisher", "admin"):
        raise Forbidden("only publishers and admins may notify other users")


def require_event_publisher(principal: Principal) -> None:
    """Publishing events for other modules: publishers and admins."""
    if principal.role not in ("publisher", "admin"):
        raise Forbidden("only publishers and admins may publish events")


def require_admin(principal: Principal | None) -> None:
    """Admin-only views (stats naming users)."""
    if principal is None or not principal.is_admin:
        raise Forbidden("only admins may see this")
