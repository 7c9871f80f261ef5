// The peer for Baton's side-by-side benchmark: panva oidc-provider configured as
// the nearest equivalent of Baton's assertion mode — client_credentials, the client
// authenticating with an ES256 private_key_jwt assertion (RFC 7523), and an ES256 JWT
// access token (RFC 9068) for one resource chosen by a resource indicator (RFC 8707).
//
// Run: PEER_CLIENT_KEY=client.pem [PEER_PORT=3999] NODE_ENV=production node provider.mjs
// Prints one line "listening <issuer>" to stdout once it accepts connections, and
// nothing per request. infra/bench/compare.sh starts it pinned to one core.
//
// Nothing here makes the peer slower than a production deployment would be: only the
// one client auth method and algorithm are enabled, no dev interactions, no per-request
// logging. Its one-time use of assertions (replay detection) lives in oidc-provider's
// bundled in-memory adapter — it warns that this is for development, because state is
// lost on restart and is bounded — where production would use a shared store at the
// cost of a network round trip, so if anything the setup favours the peer.
import { createServer } from 'node:http';
import { createPrivateKey, createPublicKey, generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';

import Provider from 'oidc-provider';

const CLIENT_ID = 'baton-bench';
const RESOURCE = 'https://payments.example';

const port = Number.parseInt(process.env.PEER_PORT ?? '3999', 10);
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error(`PEER_PORT must be a TCP port, got ${JSON.stringify(process.env.PEER_PORT)}`);
  process.exit(2);
}
const keyPath = process.env.PEER_CLIENT_KEY;
if (!keyPath) {
  console.error('PEER_CLIENT_KEY must name the client\'s P-256 private key (PEM, PKCS#8)');
  process.exit(2);
}

// The client registers only its public key; the private half stays with the load tool.
const clientKey = createPrivateKey(readFileSync(keyPath));
if (clientKey.asymmetricKeyType !== 'ec' || clientKey.asymmetricKeyDetails?.namedCurve !== 'prime256v1') {
  console.error('PEER_CLIENT_KEY must be a P-256 key');
  process.exit(2);
}
const clientJwk = { ...createPublicKey(clientKey).export({ format: 'jwk' }), alg: 'ES256', use: 'sig' };

// A fresh signing key per run, as Baton's bench does: nothing persists between runs.
const { privateKey: signingKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const signingJwk = { ...signingKey.export({ format: 'jwk' }), alg: 'ES256', use: 'sig', kid: 'peer-es256' };

const issuer = `http://127.0.0.1:${port}`;

const provider = new Provider(issuer, {
  clients: [{
    client_id: CLIENT_ID,
    token_endpoint_auth_method: 'private_key_jwt',
    token_endpoint_auth_signing_alg: 'ES256',
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    jwks: { keys: [clientJwk] },
    // The provider holds only an ES256 key; the RS256 default would be refused.
    id_token_signed_response_alg: 'ES256',
  }],
  // Only what the benchmark uses: fewer methods, fewer checks on each request.
  clientAuthMethods: ['private_key_jwt'],
  enabledJWA: {
    clientAuthSigningAlgValues: ['ES256'],
  },
  jwks: { keys: [signingJwk] },
  // The resource server's accessTokenTTL decides; this only silences the provider's
  // notice about relying on its default ttl function.
  ttl: { ClientCredentials: (_ctx, token) => token.resourceServer?.accessTokenTTL ?? 60 },
  // Cookies are never set on this path, but the provider warns without explicit keys.
  cookies: { keys: [randomBytes(32).toString('base64url')] },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    // The peer cannot introspect its own JWT access tokens (they are not stored), so
    // introspection is on for parity of configuration only; compare.sh measures
    // Baton's introspection against the one-verify ceiling instead.
    introspection: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => RESOURCE,
      getResourceServerInfo: () => ({
        scope: '',
        audience: RESOURCE,
        accessTokenTTL: 60,
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg: 'ES256' } },
      }),
      useGrantedResource: () => true,
    },
  },
});

// Koa logs 5xx errors to stderr by default; report the first one instead of flooding
// the console (and skewing the measurement) when something is systematically wrong.
provider.silent = true;
let serverErrors = 0;
provider.on('server_error', (_ctx, err) => {
  serverErrors += 1;
  if (serverErrors === 1) console.error(`first server_error: ${err?.message ?? err}`);
});

const server = createServer(provider.callback());
// The load generator holds keep-alive connections for the whole run.
server.keepAliveTimeout = 60_000;
server.headersTimeout = 65_000;
server.listen(port, '127.0.0.1', () => {
  console.log(`listening ${issuer}`);
});

function stop() {
  if (serverErrors > 0) console.error(`server_errors: ${serverErrors}`);
  server.close(() => process.exit(0));
  server.closeAllConnections();
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
