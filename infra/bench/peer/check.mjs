// One request against provider.mjs, to check the peer's setup without Baton's load
// generator: a client_credentials grant authenticated by an ES256 private_key_jwt
// assertion, asking for https://payments.example by resource indicator.
//
// Run (provider already started with the same key and port):
//   PEER_CLIENT_KEY=client.pem [PEER_PORT=3999] node check.mjs
// Prints the access token's JOSE header and claims, and checks that the provider
// accepts both audiences RFC 7523 allows (issuer, token endpoint), refuses a replayed
// assertion, and (as expected of oidc-provider) cannot introspect its JWT access token.
// Exits non-zero if the token is not an ES256 JWT for the resource.
import { randomUUID, createPrivateKey } from 'node:crypto';
import { readFileSync } from 'node:fs';

import { SignJWT, decodeJwt, decodeProtectedHeader } from 'jose';

const CLIENT_ID = 'baton-bench';
const RESOURCE = 'https://payments.example';
const port = process.env.PEER_PORT ?? '3999';
const issuer = `http://127.0.0.1:${port}`;
const tokenUrl = `${issuer}/token`;
const key = createPrivateKey(readFileSync(process.env.PEER_CLIENT_KEY ?? 'client.pem'));

function assertion(aud) {
  const now = Math.floor(Date.now() / 1000);
  return new SignJWT({})
    .setProtectedHeader({ alg: 'ES256', typ: 'JWT' })
    .setIssuer(CLIENT_ID)
    .setSubject(CLIENT_ID)
    .setAudience(aud)
    .setJti(randomUUID())
    .setIssuedAt(now)
    .setExpirationTime(now + 60)
    .sign(key);
}

async function post(url, form) {
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams(form),
  });
  return { status: res.status, body: await res.json() };
}

function authForm(clientAssertion) {
  return {
    client_id: CLIENT_ID,
    client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer',
    client_assertion: clientAssertion,
  };
}

function tokenForm(clientAssertion) {
  return { grant_type: 'client_credentials', resource: RESOURCE, ...authForm(clientAssertion) };
}

let failed = false;
function expect(ok, what) {
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${what}`);
  if (!ok) failed = true;
}

const first = await assertion(tokenUrl);
const res = await post(tokenUrl, tokenForm(first));
if (res.status !== 200) {
  console.error(`token request failed: ${res.status} ${JSON.stringify(res.body)}`);
  process.exit(1);
}
const header = decodeProtectedHeader(res.body.access_token);
const claims = decodeJwt(res.body.access_token);
console.log(`header: ${JSON.stringify(header)}`);
console.log(`claims: ${JSON.stringify(claims)}`);
console.log(`token_type: ${res.body.token_type}, expires_in: ${res.body.expires_in}`);
expect(header.alg === 'ES256', 'access token signed ES256');
expect(header.typ === 'at+jwt', 'access token typ at+jwt (RFC 9068)');
expect(claims.aud === RESOURCE, `access token aud is ${RESOURCE}`);
expect(claims.sub === CLIENT_ID && claims.client_id === CLIENT_ID, 'access token sub and client_id are the client');

const replay = await post(tokenUrl, tokenForm(first));
expect(replay.status === 401 && replay.body.error === 'invalid_client', 'a replayed assertion is invalid_client');

const byIssuer = await post(tokenUrl, tokenForm(await assertion(issuer)));
expect(byIssuer.status === 200, 'assertion with aud = issuer accepted');

const wrongAud = await post(tokenUrl, tokenForm(await assertion('https://elsewhere.example')));
expect(wrongAud.status === 401, 'assertion with a foreign aud refused');

const introspection = await post(`${issuer}/token/introspection`, {
  token: res.body.access_token,
  ...authForm(await assertion(tokenUrl)),
});
console.log(`introspection of the JWT access token: ${introspection.status} ${JSON.stringify(introspection.body)}`);

process.exit(failed ? 1 : 0);
