#!/usr/bin/python3
"""Verify Baton access tokens in Python with PyJWT and cryptography.

The checks are those of docs/other-languages.md, in the order Baton's own SDK makes
them. Tested by tests/tests/other_languages.rs against a real `baton serve`, with
PyJWT 2.6 and cryptography 38 (Debian 12: python3-jwt, python3-cryptography).

    /usr/bin/python3 verify_baton.py --issuer https://localhost:8443 \
        --bundle baton-data/bundle.pem --audience spiffe://example.org/fn/payments TOKEN

Keys come from GET <issuer>/.well-known/jwks.json over HTTPS trusting only the
bundle, or from --jwks FILE. Each TOKEN ('-': one per line on stdin) is verified in
turn by one verifier, so a repeated token is refused as replayed. With
--introspect-cert and --introspect-key (the callee's own workload certificate and
key) each token is also consumed at the issuer by RFC 7662 introspection: one use
across every verifier of the issuer, not only this process.

Exit 0 and one JSON line per verified caller on stdout; exit 1 and
"refused: <reason>: <detail>" on stderr at the first refused token; exit 2 when the
verifier cannot start (bad arguments, no trusted key, issuer unreachable).
"""

import argparse
import base64
import json
import ssl
import sys
import time
import urllib.parse
import urllib.request
from datetime import timezone

import jwt
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import SignatureAlgorithmOID

LEEWAY = 5  # seconds; SPEC §4 allows at most 5
MAX_LIFETIME = 300  # exp - iat, seconds
MAX_TOKEN_BYTES = 8192
MAX_JWKS_BYTES = 256 * 1024
# The only algorithms, each bound to one key type: never "none", never HS*/RS*.
KEY_TYPES = {"ES256": ("EC", "P-256"), "EdDSA": ("OKP", "Ed25519")}
# A JWKS holds public keys only; a private or symmetric member means a broken set.
PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
CLAIMS = ["iss", "sub", "aud", "exp", "nbf", "iat", "jti"]


class Refused(Exception):
    """A token (or a key) failed a check; reason is a stable word, detail is prose."""

    def __init__(self, reason, detail):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def load_bundle(path):
    """The CA certificates of a PEM trust bundle."""
    with open(path, "rb") as f:
        pem = f.read()
    end = b"-----END CERTIFICATE-----"
    blocks = [b + end for b in pem.split(end) if b"-----BEGIN CERTIFICATE-----" in b]
    if not blocks:
        raise ValueError(f"{path} holds no certificate")
    return [x509.load_pem_x509_certificate(b) for b in blocks]


def https_context(bundle_path, cert=None, key=None):
    """TLS that trusts only the Baton bundle (the issuer's server certificate comes
    from the trust domain CA), optionally presenting a workload certificate."""
    ctx = ssl.create_default_context(cafile=bundle_path)
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


def fetch_jwks(issuer, bundle_path):
    url = issuer.rstrip("/") + "/.well-known/jwks.json"
    with urllib.request.urlopen(url, context=https_context(bundle_path), timeout=10) as resp:
        body = resp.read(MAX_JWKS_BYTES + 1)
    if len(body) > MAX_JWKS_BYTES:
        raise ValueError("the JWKS is larger than 256 KiB")
    return json.loads(body)


def _timestamp(naive_utc):
    # cryptography 38 returns naive datetimes in UTC.
    return naive_utc.replace(tzinfo=timezone.utc).timestamp()


def _valid_at(cert, now):
    return _timestamp(cert.not_valid_before) <= now <= _timestamp(cert.not_valid_after)


def _signed_by(cert, ca):
    """Whether ca's key made cert's signature (the CAs Baton makes: P-256 or Ed25519)."""
    key = ca.public_key()
    oid = cert.signature_algorithm_oid
    try:
        if isinstance(key, ec.EllipticCurvePublicKey) and oid in (
            SignatureAlgorithmOID.ECDSA_WITH_SHA256,
            SignatureAlgorithmOID.ECDSA_WITH_SHA384,
        ):
            key.verify(cert.signature, cert.tbs_certificate_bytes,
                       ec.ECDSA(cert.signature_hash_algorithm))
        elif isinstance(key, ed25519.Ed25519PublicKey) and oid == SignatureAlgorithmOID.ED25519:
            key.verify(cert.signature, cert.tbs_certificate_bytes)
        else:
            return False
    except InvalidSignature:
        return False
    return True


def _is_ca(cert):
    # RFC 5280 §4.2.1.9: cA DEFAULT FALSE; no basicConstraints: an end entity.
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _spki(key):
    return key.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def trust_jwk(jwk, bundle, signer_id, now):
    """The (alg, public key, not_before, not_after) of one JWK, or Refused.

    cryptography 38 has no path builder (x509.verification came in 42), so the chain
    is checked by hand. Baton signs every token-signer certificate with the root CA
    itself: x5c[0] must be signed by a CA of the bundle; further x5c entries are not
    needed and are ignored.
    """
    alg = jwk.get("alg")
    if alg not in KEY_TYPES or (jwk.get("kty"), jwk.get("crv")) != KEY_TYPES[alg]:
        raise Refused("untrusted_key", "alg is not ES256 on P-256 or EdDSA on Ed25519")
    if jwk.get("use", "sig") != "sig" or any(m in jwk for m in PRIVATE_MEMBERS):
        raise Refused("untrusted_key", "not a public signature key")
    x5c = jwk.get("x5c")
    if not isinstance(x5c, list) or not x5c or not isinstance(x5c[0], str):
        raise Refused("untrusted_key", "no x5c certificate")
    try:
        # RFC 7517 §4.7: standard base64 (not base64url) DER, leaf first.
        leaf = x509.load_der_x509_certificate(base64.b64decode(x5c[0], validate=True))
    except ValueError:
        raise Refused("untrusted_key", "x5c[0] is not a certificate") from None

    # 1. The leaf chains to the trust bundle, and every certificate is in date.
    issuers = [ca for ca in bundle if ca.subject == leaf.issuer and _signed_by(leaf, ca)]
    if not issuers:
        raise Refused("untrusted_key", "its certificate does not chain to the trust bundle")
    ca = issuers[0]
    try:
        ca_is_ca, leaf_is_ca = _is_ca(ca), _is_ca(leaf)
        extensions = leaf.extensions
        usage = extensions.get_extension_for_class(x509.KeyUsage).value
        names = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        raise Refused("untrusted_key", "its certificate lacks key usage or names") from None
    if not ca_is_ca or not _valid_at(ca, now):
        raise Refused("untrusted_key", "its issuing CA is not a valid CA")
    if not _valid_at(leaf, now):
        raise Refused("untrusted_key", "its certificate is expired or not yet valid")

    # 2. The leaf is an end entity that signs, named exactly the reserved signer ID.
    #    Without this, any workload's X.509-SVID (same CA, and its holder has the
    #    private key) would pass as a token-signing key.
    if leaf_is_ca:
        raise Refused("untrusted_key", "its certificate is a CA certificate")
    if not usage.digital_signature or usage.key_cert_sign or usage.crl_sign:
        raise Refused("untrusted_key", "its key usage is not digitalSignature only")
    if len(names) != 1 or names.get_values_for_type(x509.UniformResourceIdentifier) != [signer_id]:
        raise Refused("untrusted_key", f"its certificate is not {signer_id}")

    # 3. The JWK's key is the certificate's key.
    algorithm = jwt.algorithms.ECAlgorithm if alg == "ES256" else jwt.algorithms.OKPAlgorithm
    try:
        key = algorithm.from_jwk(jwk)
    except jwt.InvalidKeyError:
        raise Refused("untrusted_key", "its key parameters do not decode") from None
    if _spki(key) != _spki(leaf.public_key()):
        raise Refused("untrusted_key", "its key is not the key of its certificate")
    not_before = max(_timestamp(leaf.not_valid_before), _timestamp(ca.not_valid_before))
    not_after = min(_timestamp(leaf.not_valid_after), _timestamp(ca.not_valid_after))
    return alg, key, not_before, not_after


def trusted_keys(jwks, bundle, trust_domain, now, log=None):
    """kid -> trusted key, for every JWK of the set that passes trust_jwk."""
    signer_id = f"spiffe://{trust_domain}/baton/token-signer"
    keys = {}
    for jwk in jwks.get("keys", []) if isinstance(jwks, dict) else []:
        kid = jwk.get("kid") if isinstance(jwk, dict) else None
        if not isinstance(kid, str) or not kid or kid in keys:
            continue
        try:
            keys[kid] = trust_jwk(jwk, bundle, signer_id, now)
        except Refused as e:
            if log:
                log(f"ignoring key {kid!r}: {e}")
    return keys


class Verifier:
    """Verifies tokens for one callee; each token is accepted once (replay cache)."""

    def __init__(self, issuer, audience, keys, introspect=None):
        if not audience.startswith("spiffe://"):
            raise ValueError("the audience is this callee's own SPIFFE ID")
        self.issuer = issuer
        self.audience = audience
        self.trust_domain = audience[len("spiffe://"):].split("/", 1)[0]
        self.keys = keys
        self.introspect = introspect  # callable(token) -> RFC 7662 answer, or None
        self.seen = {}  # jti -> when it may be forgotten (exp + leeway)

    def verify(self, token, now=None):
        now = int(time.time()) if now is None else now
        if len(token) > MAX_TOKEN_BYTES:
            raise Refused("too_large", "the token is over 8 KiB")
        try:
            header = jwt.get_unverified_header(token)  # unverified: only names the key
        except jwt.DecodeError:
            raise Refused("malformed", "not a compact JWS") from None

        # Header: allow-listed alg, at+jwt, a kid naming a trusted key whose alg it is.
        alg = header.get("alg")
        if alg not in KEY_TYPES:
            raise Refused("unsupported_algorithm", f"alg {alg!r} is not ES256 or EdDSA")
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() not in ("at+jwt", "application/at+jwt"):
            raise Refused("wrong_type", "typ is not at+jwt")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise Refused("missing_key_id", "the header has no kid")
        # kid is attacker-controlled: only ever a dictionary lookup.
        entry = self.keys.get(kid)
        if entry is None or not entry[2] <= now <= entry[3]:
            raise Refused("unknown_key", "kid names no trusted key")
        key_alg, key = entry[0], entry[1]
        if alg != key_alg:
            raise Refused("algorithm_mismatch", "alg is not the key's algorithm")

        # Signature, then iss, aud, exp, nbf: PyJWT, with the algorithm from the key.
        try:
            claims = jwt.decode(
                token, key, algorithms=[key_alg], audience=self.audience,
                issuer=self.issuer, leeway=LEEWAY, options={"require": CLAIMS})
        except jwt.InvalidSignatureError:
            raise Refused("bad_signature", "the signature does not verify") from None
        except jwt.ExpiredSignatureError:
            raise Refused("expired", "exp has passed") from None
        except jwt.ImmatureSignatureError as e:  # PyJWT says which claim in prose
            if "(iat)" in str(e):
                raise Refused("issued_in_future", "iat is in the future") from None
            raise Refused("not_yet_valid", "nbf is in the future") from None
        except jwt.InvalidIssuerError:
            raise Refused("wrong_issuer", "iss is not this issuer") from None
        except jwt.InvalidAudienceError:
            raise Refused("wrong_audience", "aud is not this callee") from None
        except jwt.MissingRequiredClaimError as e:
            reason = "missing_jti" if e.claim == "jti" else "malformed"
            raise Refused(reason, f"no {e.claim} claim") from None
        except jwt.InvalidTokenError as e:
            raise Refused("malformed", type(e).__name__) from None

        # What PyJWT 2.6 leaves to the caller.
        if not all(type(claims[c]) is int for c in ("exp", "nbf", "iat")):
            raise Refused("malformed", "exp, nbf and iat are not integers")
        if claims["aud"] != self.audience:  # one string; PyJWT also takes a list
            raise Refused("wrong_audience", "aud is not exactly this callee")
        if claims["iat"] > now + LEEWAY:
            raise Refused("issued_in_future", "iat is in the future")
        if not 0 < claims["exp"] - claims["iat"] <= MAX_LIFETIME:
            raise Refused("lifetime_too_long", "exp - iat is not within 300 s")
        jti = claims["jti"]
        if not isinstance(jti, str) or not jti or len(jti) > 256:
            raise Refused("missing_jti", "jti is not a non-empty string")
        sub = claims["sub"]
        if not (isinstance(sub, str) and sub.startswith(f"spiffe://{self.trust_domain}/")
                and claims.get("client_id") == sub):
            raise Refused("malformed", "sub is not a SPIFFE ID of this trust domain")

        # One-time use, last: a token refused above never burns its jti.
        self._consume(jti, claims["exp"] + LEEWAY, now)
        if self.introspect is not None:
            answer = self.introspect(token)
            if answer.get("active") is not True or answer.get("jti") != jti:
                raise Refused("inactive", "the issuer says the token is not active (used?)")
        scope = claims.get("scope")
        return {"id": sub, "scopes": scope.split() if isinstance(scope, str) else [],
                "jti": jti, "expires_at": claims["exp"]}

    def _consume(self, jti, keep_until, now):
        for old in [j for j, until in self.seen.items() if until < now]:
            del self.seen[old]
        if jti in self.seen:
            raise Refused("replayed", "this token was already used")
        self.seen[jti] = keep_until


def introspector(issuer, bundle_path, cert, key):
    """RFC 7662 introspection as the callee, over mTLS: the audience's introspection
    consumes the token at the issuer (SPEC §5)."""
    ctx = https_context(bundle_path, cert, key)
    url = issuer.rstrip("/") + "/v1/introspect"

    def introspect(token):
        body = urllib.parse.urlencode({"token": token}).encode()
        request = urllib.request.Request(url, data=body, method="POST", headers={
            "Content-Type": "application/x-www-form-urlencoded"})
        try:
            with urllib.request.urlopen(request, context=ctx, timeout=10) as resp:
                return json.loads(resp.read(64 * 1024))
        except (OSError, ValueError) as e:  # fail closed
            raise Refused("introspection_unavailable", type(e).__name__) from None

    return introspect


def main(argv=None):
    p = argparse.ArgumentParser(description="Verify Baton access tokens.")
    p.add_argument("--issuer", required=True, help="issuer URL: the expected iss")
    p.add_argument("--jwks", help="read the keys from this file instead of the issuer")
    p.add_argument("--bundle", required=True, help="trust bundle (PEM)")
    p.add_argument("--audience", required=True, help="this callee's own SPIFFE ID")
    p.add_argument("--introspect-cert", help="callee workload certificate (PEM)")
    p.add_argument("--introspect-key", help="its private key (PEM)")
    p.add_argument("tokens", nargs="+", metavar="TOKEN", help="'-' reads stdin")
    args = p.parse_args(argv)
    tokens = [t for arg in args.tokens
              for t in (sys.stdin.read().split() if arg == "-" else [arg])]

    def log(message):
        print(message, file=sys.stderr)

    try:
        bundle = load_bundle(args.bundle)
        if args.jwks:
            with open(args.jwks, "rb") as f:
                jwks = json.loads(f.read(MAX_JWKS_BYTES + 1))
        else:
            jwks = fetch_jwks(args.issuer, args.bundle)
        trust_domain = args.audience[len("spiffe://"):].split("/", 1)[0]
        keys = trusted_keys(jwks, bundle, trust_domain, time.time(), log)
        if not keys:
            raise ValueError("the JWKS holds no trusted key")
        introspect = None
        if args.introspect_cert:
            introspect = introspector(args.issuer, args.bundle,
                                      args.introspect_cert, args.introspect_key)
        verifier = Verifier(args.issuer, args.audience, keys, introspect)
    except (OSError, ValueError) as e:
        log(f"cannot start: {e}")
        return 2
    for token in tokens:
        try:
            caller = verifier.verify(token)
        except Refused as e:
            log(f"refused: {e}")  # the reason only: never the token
            return 1
        print(json.dumps(caller), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
