// A real OpenID provider (oidc-provider, pinned in ../package.json) for
// Palisade's auth end-to-end tests (tests/auth/test_oidc_provider.py).
//
//   node tests/node/oidc/provider.mjs [PORT]
//
// PORT (argument, else $OIDC_PORT, else 0): 0 picks a free port. The issuer is
// http://127.0.0.1:PORT (no path), so discovery is at
// /.well-known/openid-configuration. Once the server accepts connections it
// prints exactly one line on stdout:
//
//   oidc-provider listening on http://127.0.0.1:PORT
//
// What it offers:
//   - one confidential client ($OIDC_CLIENT_ID / $OIDC_CLIENT_SECRET, default
//     palisade-test / palisade-test-secret) allowed the client_credentials grant
//     (client_secret_basic or client_secret_post);
//   - resource indicators (RFC 8707): any absolute http(s) URI without a
//     fragment is accepted as `resource`; the access token is then a JWT
//     (RFC 9068, typ at+jwt) whose `aud` is that resource and whose scope is
//     the requested subset of "mcp" ($OIDC_RESOURCE_SCOPES, space-separated);
//   - a fresh ES256 signing key, generated with node:crypto at every start and
//     published at the provider's jwks_uri;
//   - opaque access tokens for introspection (RFC 7662): a second confidential
//     client, $OIDC_OPAQUE_CLIENT_ID (default palisade-test-opaque, same secret,
//     client_secret_basic), gets the same resource-bound client_credentials
//     tokens as the first, but opaque instead of JWT. Its tokens carry
//     `sub` = its client id (see extraTokenClaims below);
//   - the introspection endpoint (/token/introspection), answering only the
//     resource server's own client, $OIDC_GATEWAY_CLIENT_ID /
//     $OIDC_GATEWAY_CLIENT_SECRET (default palisade-gateway /
//     palisade-gateway-secret, client_secret_basic); any other client gets
//     {"active": false}. Every introspection call that reaches the provider
//     prints one stdout line (never the token), so tests can count calls:
//
//       oidc-provider introspection status=200 client_id=palisade-gateway active=true
//
//     (client_id is the client the caller named, "-" if none; status=401
//     when its authentication failed);
//   - the revocation endpoint (/token/revocation, RFC 7009): a client may
//     revoke its own tokens.
//
// Stops on SIGTERM / SIGINT.

import * as crypto from 'node:crypto';
import * as http from 'node:http';
import process from 'node:process';

import Provider, { errors } from 'oidc-provider';

const port = Number(process.argv[2] ?? process.env.OIDC_PORT ?? 0);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`provider.mjs: bad port ${process.argv[2] ?? process.env.OIDC_PORT}`);
  process.exit(2);
}
const clientId = process.env.OIDC_CLIENT_ID || 'palisade-test';
const clientSecret = process.env.OIDC_CLIENT_SECRET || 'palisade-test-secret';
const resourceScopes = process.env.OIDC_RESOURCE_SCOPES || 'mcp';
const accessTokenTtl = Number(process.env.OIDC_ACCESS_TOKEN_TTL || 600);
const opaqueClientId = process.env.OIDC_OPAQUE_CLIENT_ID || 'palisade-test-opaque';
const gatewayClientId = process.env.OIDC_GATEWAY_CLIENT_ID || 'palisade-gateway';
const gatewayClientSecret = process.env.OIDC_GATEWAY_CLIENT_SECRET || 'palisade-gateway-secret';
const introspectionPath = '/token/introspection';

function signingJwks() {
  const { privateKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const jwk = privateKey.export({ format: 'jwk' });
  return { keys: [{ ...jwk, kid: `es256-${crypto.randomUUID()}`, alg: 'ES256', use: 'sig' }] };
}

function isResourceUri(value) {
  try {
    const url = new URL(value);
    return (url.protocol === 'http:' || url.protocol === 'https:') && !value.includes('#');
  } catch {
    return false;
  }
}

const server = http.createServer();

server.listen(port, '127.0.0.1', () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;

  const provider = new Provider(issuer, {
    jwks: signingJwks(),
    clients: [
      {
        client_id: clientId,
        client_secret: clientSecret,
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
        token_endpoint_auth_method: 'client_secret_basic',
      },
      {
        client_id: `${clientId}-post`,
        client_secret: clientSecret,
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
        token_endpoint_auth_method: 'client_secret_post',
      },
      {
        client_id: opaqueClientId,
        client_secret: clientSecret,
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
        token_endpoint_auth_method: 'client_secret_basic',
      },
      {
        // The gateway as a resource server: it only calls the introspection
        // endpoint, so it may use no grant.
        client_id: gatewayClientId,
        client_secret: gatewayClientSecret,
        grant_types: [],
        response_types: [],
        redirect_uris: [],
        token_endpoint_auth_method: 'client_secret_basic',
      },
    ],
    clientDefaults: {
      id_token_signed_response_alg: 'ES256',
    },
    // Static scopes known to the provider; "mcp" is granted only through the
    // resource server below.
    scopes: ['openid', 'offline_access', ...resourceScopes.split(' ').filter(Boolean)],
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: {
        enabled: true,
        // Only the resource server may learn what a token is worth.
        allowedPolicy: async (_ctx, client) => client.clientId === gatewayClientId,
      },
      revocation: {
        enabled: true,
        allowedPolicy: async (_ctx, client, token) => client.clientId === token.clientId,
      },
      resourceIndicators: {
        enabled: true,
        // No resource requested: no default (the token would be opaque and
        // useless to the gateway); tests always send one.
        defaultResource: async (_ctx, _client, oneOf) => oneOf,
        useGrantedResource: async () => true,
        getResourceServerInfo: async (_ctx, resourceIndicator, client) => {
          if (!isResourceUri(resourceIndicator)) {
            throw new errors.InvalidTarget();
          }
          return {
            audience: resourceIndicator,
            scope: resourceScopes,
            accessTokenFormat: client?.clientId === opaqueClientId ? 'opaque' : 'jwt',
            accessTokenTTL: accessTokenTtl,
            jwt: { sign: { alg: 'ES256' } },
          };
        },
      },
    },
    // A client_credentials token has no end user, and oidc-provider's
    // introspection answer only has a `sub` for tokens with an account. JWT
    // access tokens use the client id as `sub` in that case (RFC 9068 2.2);
    // for opaque tokens the documented way to add claims is extraTokenClaims:
    // they are stored with the token and returned by introspection as top-level
    // members. So the opaque client's tokens say sub = client id, like its JWTs
    // would (for JWTs the provider sets that `sub` itself, after these claims).
    extraTokenClaims: async (_ctx, token) => (
      token.kind === 'ClientCredentials' && !token.accountId ? { sub: token.clientId } : undefined
    ),
    ttl: {
      ClientCredentials: (_ctx, token) => token.resourceServer?.accessTokenTTL || accessTokenTtl,
    },
    // Random per-start cookie keys (no browser flows here, but the provider
    // warns without them).
    cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
  });

  provider.on('server_error', (_ctx, err) => {
    console.error(`oidc-provider server_error: ${err?.stack || err}`);
  });
  provider.on('grant.error', (_ctx, err) => {
    console.error(`oidc-provider grant.error: ${err?.name}: ${err?.message} ${err?.error_description ?? ''}`);
  });

  // Counts introspection calls for the tests: one stdout line per call, after
  // the answer is decided and before it is sent (so the line is in the pipe
  // before the caller can act on the answer).
  provider.use(async (ctx, next) => {
    await next();
    if (ctx.path === introspectionPath && ctx.method === 'POST') {
      const active = ctx.body && typeof ctx.body === 'object' ? ctx.body.active === true : false;
      const caller = ctx.oidc?.client?.clientId ?? '-';
      console.log(`oidc-provider introspection status=${ctx.status} client_id=${caller} active=${active}`);
    }
  });

  server.on('request', provider.callback());
  console.log(`oidc-provider listening on ${issuer}`);
});

server.on('error', (err) => {
  console.error(`provider.mjs: ${err.message}`);
  process.exit(1);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    server.close();
    server.closeAllConnections?.();
    process.exit(0);
  });
}
