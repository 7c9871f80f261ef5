#!/usr/bin/node
// Verify Baton access tokens in Node.js with the built-in node:crypto only (no npm).
//
// The checks are those of docs/other-languages.md, in the order Baton's own SDK makes
// them. Tested by tests/tests/other_languages.rs against a real `baton serve`, with
// Node.js 20.
//
//   node verify_baton.mjs --issuer https://localhost:8443 \
//       --bundle baton-data/bundle.pem --audience spiffe://example.org/fn/payments TOKEN
//
// Keys come from GET <issuer>/.well-known/jwks.json over HTTPS trusting only the
// bundle, or from --jwks FILE. Each TOKEN ('-': one per line on stdin) is verified in
// turn by one verifier, so a repeated token is refused as replayed. With
// --introspect-cert and --introspect-key (the callee's own workload certificate and
// key) each token is also consumed at the issuer by RFC 7662 introspection: one use
// across every verifier of the issuer, not only this process.
//
// Exit 0 and one JSON line per verified caller on stdout; exit 1 and
// "refused: <reason>: <detail>" on stderr at the first refused token; exit 2 when the
// verifier cannot start (bad arguments, no trusted key, issuer unreachable).

import { X509Certificate, createPublicKey, verify as verifySignature } from 'node:crypto';
import { readFileSync, realpathSync } from 'node:fs';
import https from 'node:https';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

const LEEWAY = 5; // seconds; SPEC §4 allows at most 5
const MAX_LIFETIME = 300; // exp - iat, seconds
const MAX_TOKEN_BYTES = 8192;
const MAX_JWKS_BYTES = 256 * 1024;
// The only algorithms, each bound to one key type: never "none", never HS*/RS*.
const KEY_TYPES = { ES256: ['EC', 'P-256'], EdDSA: ['OKP', 'Ed25519'] };
// A JWKS holds public keys only; a private or symmetric member means a broken set.
const PRIVATE_MEMBERS = ['d', 'p', 'q', 'dp', 'dq', 'qi', 'oth', 'k'];

export class Refused extends Error {
  constructor(reason, detail) {
    super(`${reason}: ${detail}`);
    this.reason = reason;
  }
}

/** The CA certificates of a PEM trust bundle. */
export function loadBundle(pem) {
  const blocks = pem.match(/-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----/g) ?? [];
  if (blocks.length === 0) throw new Error('the bundle holds no certificate');
  return blocks.map((block) => new X509Certificate(block));
}

/** GET or POST over HTTPS trusting only the bundle (and presenting a certificate). */
function request(url, { ca, cert, key, form } = {}) {
  return new Promise((resolve, reject) => {
    const body = form ? new URLSearchParams(form).toString() : undefined;
    const req = https.request(url, {
      method: form ? 'POST' : 'GET',
      ca, cert, key, // ca replaces Node's default roots: only the trust domain CA
      timeout: 10_000,
      headers: form ? { 'content-type': 'application/x-www-form-urlencoded' } : {},
    }, (res) => {
      const chunks = [];
      let size = 0;
      res.on('data', (chunk) => {
        size += chunk.length;
        if (size > MAX_JWKS_BYTES) req.destroy(new Error('the answer is too large'));
        else chunks.push(chunk);
      });
      res.on('end', () => {
        if (res.statusCode !== 200) return reject(new Error(`HTTP ${res.statusCode}`));
        try {
          resolve(JSON.parse(Buffer.concat(chunks).toString('utf8')));
        } catch (e) {
          reject(e);
        }
      });
    });
    req.on('timeout', () => req.destroy(new Error('timed out')));
    req.on('error', reject);
    req.end(body);
  });
}

export function fetchJwks(issuer, bundlePem) {
  return request(`${issuer.replace(/\/$/, '')}/.well-known/jwks.json`, { ca: bundlePem });
}

const seconds = (date) => Date.parse(date) / 1000; // NaN compares false: fails closed
const validAt = (cert, now) => seconds(cert.validFrom) <= now && now <= seconds(cert.validTo);
const spki = (key) => key.export({ type: 'spki', format: 'der' });

/**
 * The { alg, key, notBefore, notAfter } of one JWK, or throws Refused.
 *
 * Baton signs every token-signer certificate with the root CA itself: x5c[0] must be
 * issued and signed by a CA of the bundle; further x5c entries are not needed and are
 * ignored.
 */
export function trustJwk(jwk, bundle, signerId, now) {
  const alg = jwk.alg;
  const type = Object.hasOwn(KEY_TYPES, alg) ? KEY_TYPES[alg] : null;
  if (!type || jwk.kty !== type[0] || jwk.crv !== type[1]) {
    throw new Refused('untrusted_key', 'alg is not ES256 on P-256 or EdDSA on Ed25519');
  }
  if ((jwk.use ?? 'sig') !== 'sig' || PRIVATE_MEMBERS.some((m) => m in jwk)) {
    throw new Refused('untrusted_key', 'not a public signature key');
  }
  if (!Array.isArray(jwk.x5c) || typeof jwk.x5c[0] !== 'string'
      || !/^[A-Za-z0-9+/]+={0,2}$/.test(jwk.x5c[0])) {
    throw new Refused('untrusted_key', 'no x5c certificate');
  }
  let leaf;
  try {
    // RFC 7517 §4.7: standard base64 (not base64url) DER, leaf first.
    leaf = new X509Certificate(Buffer.from(jwk.x5c[0], 'base64'));
  } catch {
    throw new Refused('untrusted_key', 'x5c[0] is not a certificate');
  }

  // 1. The leaf chains to the trust bundle, and every certificate is in date.
  //    checkIssued compares the names (and key identifiers); verify checks the signature.
  const ca = bundle.find((c) => leaf.checkIssued(c) && leaf.verify(c.publicKey));
  if (!ca) throw new Refused('untrusted_key', 'its certificate does not chain to the trust bundle');
  if (!ca.ca || !validAt(ca, now)) throw new Refused('untrusted_key', 'its issuing CA is not a valid CA');
  if (!validAt(leaf, now)) throw new Refused('untrusted_key', 'its certificate is expired or not yet valid');

  // 2. The leaf is an end entity named exactly the reserved signer ID, and nothing
  //    else. Without this, any workload's X.509-SVID (same CA, and its holder has the
  //    private key) would pass as a token-signing key. Node prints the SANs as one
  //    string and quotes any name with a separator in it, so one exact comparison
  //    means "one SAN, this URI".
  if (leaf.ca) throw new Refused('untrusted_key', 'its certificate is a CA certificate');
  if (leaf.subjectAltName !== `URI:${signerId}`) {
    throw new Refused('untrusted_key', `its certificate is not ${signerId}`);
  }

  // 3. The JWK's key is the certificate's key.
  let key;
  try {
    const { kty, crv, x, y } = jwk;
    key = createPublicKey({ key: { kty, crv, x, y }, format: 'jwk' });
  } catch {
    throw new Refused('untrusted_key', 'its key parameters do not decode');
  }
  if (!spki(key).equals(spki(leaf.publicKey))) {
    throw new Refused('untrusted_key', 'its key is not the key of its certificate');
  }
  return {
    alg,
    key,
    notBefore: Math.max(seconds(leaf.validFrom), seconds(ca.validFrom)),
    notAfter: Math.min(seconds(leaf.validTo), seconds(ca.validTo)),
  };
}

/** kid -> trusted key, for every JWK of the set that passes trustJwk. */
export function trustedKeys(jwks, bundle, trustDomain, now, log = () => {}) {
  const signerId = `spiffe://${trustDomain}/baton/token-signer`;
  const keys = new Map();
  for (const jwk of Array.isArray(jwks?.keys) ? jwks.keys : []) {
    const kid = jwk?.kid;
    if (typeof kid !== 'string' || kid === '' || keys.has(kid)) continue;
    try {
      keys.set(kid, trustJwk(jwk, bundle, signerId, now));
    } catch (e) {
      if (!(e instanceof Refused)) throw e;
      log(`ignoring key ${JSON.stringify(kid)}: ${e.message}`);
    }
  }
  return keys;
}

/** One base64url segment, strictly (Buffer.from alone skips foreign characters). */
function segment(text, what) {
  if (!/^[A-Za-z0-9_-]*$/.test(text)) throw new Refused('malformed', `${what} is not base64url`);
  return Buffer.from(text, 'base64url');
}

function json(bytes, what) {
  let value;
  try {
    value = JSON.parse(bytes.toString('utf8'));
  } catch {
    value = null;
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new Refused('malformed', `${what} is not a JSON object`);
  }
  return value;
}

/** Verifies tokens for one callee; each token is accepted once (replay cache). */
export class Verifier {
  constructor(issuer, audience, keys, introspect = null) {
    if (!audience.startsWith('spiffe://')) throw new Error("the audience is this callee's own SPIFFE ID");
    this.issuer = issuer;
    this.audience = audience;
    this.trustDomain = audience.slice('spiffe://'.length).split('/')[0];
    this.keys = keys;
    this.introspect = introspect; // async (token) => RFC 7662 answer, or null
    this.seen = new Map(); // jti -> when it may be forgotten (exp + leeway)
  }

  async verify(token, now = Math.floor(Date.now() / 1000)) {
    if (token.length > MAX_TOKEN_BYTES) throw new Refused('too_large', 'the token is over 8 KiB');
    const parts = token.split('.');
    if (parts.length !== 3) throw new Refused('malformed', 'not a compact JWS');
    const [headerB64, payloadB64, signatureB64] = parts;
    const header = json(segment(headerB64, 'the header'), 'the header');

    // Header: allow-listed alg, at+jwt, a kid naming a trusted key whose alg it is.
    if (!Object.hasOwn(KEY_TYPES, header.alg)) {
      throw new Refused('unsupported_algorithm', `alg ${JSON.stringify(header.alg)} is not ES256 or EdDSA`);
    }
    const typ = typeof header.typ === 'string' ? header.typ.toLowerCase() : '';
    if (typ !== 'at+jwt' && typ !== 'application/at+jwt') throw new Refused('wrong_type', 'typ is not at+jwt');
    if (typeof header.kid !== 'string' || header.kid === '') throw new Refused('missing_key_id', 'the header has no kid');
    // kid is attacker-controlled: only ever a Map lookup.
    const entry = this.keys.get(header.kid);
    if (!entry || !(entry.notBefore <= now && now <= entry.notAfter)) {
      throw new Refused('unknown_key', 'kid names no trusted key');
    }
    if (header.alg !== entry.alg) throw new Refused('algorithm_mismatch', "alg is not the key's algorithm");

    // Signature over the segments as sent, with the algorithm bound to the key.
    const input = Buffer.from(`${headerB64}.${payloadB64}`, 'ascii');
    const signature = segment(signatureB64, 'the signature');
    let valid = false;
    if (signature.length === 64) {
      valid = entry.alg === 'ES256'
        // JWS ES256 signatures are r||s (IEEE P1363), not DER.
        ? verifySignature('sha256', input, { key: entry.key, dsaEncoding: 'ieee-p1363' }, signature)
        : verifySignature(null, input, entry.key, signature);
    }
    if (!valid) throw new Refused('bad_signature', 'the signature does not verify');

    // Claims: authenticated from here on.
    const c = json(segment(payloadB64, 'the claims'), 'the claims');
    if (c.iss !== this.issuer) throw new Refused('wrong_issuer', 'iss is not this issuer');
    if (c.aud !== this.audience) throw new Refused('wrong_audience', 'aud is not exactly this callee (one string)');
    if (![c.exp, c.nbf, c.iat].every(Number.isSafeInteger)) {
      throw new Refused('malformed', 'exp, nbf and iat are not integers');
    }
    if (c.exp <= now - LEEWAY) throw new Refused('expired', 'exp has passed');
    if (c.nbf > now + LEEWAY) throw new Refused('not_yet_valid', 'nbf is in the future');
    if (c.iat > now + LEEWAY) throw new Refused('issued_in_future', 'iat is in the future');
    if (!(c.exp - c.iat > 0 && c.exp - c.iat <= MAX_LIFETIME)) {
      throw new Refused('lifetime_too_long', 'exp - iat is not within 300 s');
    }
    if (typeof c.jti !== 'string' || c.jti === '' || c.jti.length > 256) {
      throw new Refused('missing_jti', 'jti is not a non-empty string');
    }
    if (typeof c.sub !== 'string' || !c.sub.startsWith(`spiffe://${this.trustDomain}/`) || c.client_id !== c.sub) {
      throw new Refused('malformed', 'sub is not a SPIFFE ID of this trust domain');
    }

    // One-time use, last: a token refused above never burns its jti.
    this.consume(c.jti, c.exp + LEEWAY, now);
    if (this.introspect) {
      const answer = await this.introspect(token);
      if (answer?.active !== true || answer.jti !== c.jti) {
        throw new Refused('inactive', 'the issuer says the token is not active (used?)');
      }
    }
    const scopes = typeof c.scope === 'string' ? c.scope.split(' ').filter(Boolean) : [];
    return { id: c.sub, scopes, jti: c.jti, expires_at: c.exp };
  }

  consume(jti, keepUntil, now) {
    for (const [old, until] of this.seen) if (until < now) this.seen.delete(old);
    if (this.seen.has(jti)) throw new Refused('replayed', 'this token was already used');
    this.seen.set(jti, keepUntil);
  }
}

/**
 * RFC 7662 introspection as the callee, over mTLS: the audience's introspection
 * consumes the token at the issuer (SPEC §5).
 */
export function introspector(issuer, bundlePem, certPem, keyPem) {
  const url = `${issuer.replace(/\/$/, '')}/v1/introspect`;
  return async (token) => {
    try {
      return await request(url, { ca: bundlePem, cert: certPem, key: keyPem, form: { token } });
    } catch (e) { // fail closed
      throw new Refused('introspection_unavailable', e.code ?? e.name);
    }
  };
}

async function main() {
  const { values: a, positionals } = parseArgs({
    options: {
      issuer: { type: 'string' },
      jwks: { type: 'string' },
      bundle: { type: 'string' },
      audience: { type: 'string' },
      'introspect-cert': { type: 'string' },
      'introspect-key': { type: 'string' },
    },
    allowPositionals: true,
  });
  if (!a.issuer || !a.bundle || !a.audience || positionals.length === 0) {
    console.error('usage: verify_baton.mjs --issuer URL [--jwks FILE] --bundle PEM --audience SPIFFE_ID '
      + '[--introspect-cert PEM --introspect-key PEM] TOKEN... (- reads stdin)');
    return 2;
  }
  const tokens = positionals.flatMap((t) => (t === '-' ? readFileSync(0, 'utf8').split(/\s+/).filter(Boolean) : [t]));
  let verifier;
  try {
    const bundlePem = readFileSync(a.bundle, 'utf8');
    const bundle = loadBundle(bundlePem);
    const jwks = a.jwks ? JSON.parse(readFileSync(a.jwks, 'utf8')) : await fetchJwks(a.issuer, bundlePem);
    const trustDomain = a.audience.slice('spiffe://'.length).split('/')[0];
    const keys = trustedKeys(jwks, bundle, trustDomain, Date.now() / 1000, console.error);
    if (keys.size === 0) throw new Error('the JWKS holds no trusted key');
    const introspect = a['introspect-cert']
      ? introspector(a.issuer, bundlePem, readFileSync(a['introspect-cert']), readFileSync(a['introspect-key']))
      : null;
    verifier = new Verifier(a.issuer, a.audience, keys, introspect);
  } catch (e) {
    console.error(`cannot start: ${e.message}`);
    return 2;
  }
  for (const token of tokens) {
    try {
      console.log(JSON.stringify(await verifier.verify(token)));
    } catch (e) {
      if (!(e instanceof Refused)) throw e;
      console.error(`refused: ${e.message}`); // the reason only: never the token
      return 1;
    }
  }
  return 0;
}

if (process.argv[1] && import.meta.url === pathToFileURL(realpathSync(process.argv[1])).href) {
  process.exitCode = await main();
}
