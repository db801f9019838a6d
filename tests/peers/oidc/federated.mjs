// Workload identity for the oidc peer: a second OIDC issuer standing for a Kubernetes cluster,
// and the front's check of a federated client assertion, done the way Entra checks one against
// an app's federated identity credentials.
//
// The cluster issuer is its own HTTPS listener (same throwaway CA as the main server) that
// serves what an AKS OIDC issuer serves: a discovery document and the JWKS of the key the API
// server signs service-account tokens with. The token endpoint front fetches that JWKS through
// the issuer's `jwks_uri` for every assertion it checks, as Entra does for an issuer it trusts.
// See README.md ("Workload identity").

import * as crypto from 'node:crypto';
import * as https from 'node:https';
import {
  SignJWT, compactVerify, createLocalJWKSet, decodeJwt, decodeProtectedHeader, exportJWK,
  generateKeyPair,
} from 'jose';

// The app with a federated identity credential (a client id of its own in every tenant).
export const WORKLOAD_CLIENT_ID = '33333333-3333-3333-3333-333333333333';
// The audience Entra expects in tokens exchanged through a federated credential.
export const TOKEN_EXCHANGE_AUDIENCE = 'api://AzureADTokenExchange';
// The service account the federated credential trusts.
export const WORKLOAD_NAMESPACE = 'workloads';
export const WORKLOAD_SERVICE_ACCOUNT = 'token-reader';
export const WORKLOAD_SUBJECT = `system:serviceaccount:${WORKLOAD_NAMESPACE}:${WORKLOAD_SERVICE_ACCOUNT}`;
export const JWT_BEARER = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';
// The lifetime the AKS webhook asks for (the projected volume's expirationSeconds).
const SERVICE_ACCOUNT_TOKEN_TTL = 3600;
// Microsoft.IdentityModel's default clock skew, which Entra allows on assertions.
const CLOCK_SKEW = 300;

// What Entra answers when an assertion is refused: invalid_client, 401, one AADSTS code each.
const REFUSALS = {
  50027: 'JWT token is invalid or malformed.',
  70021: 'No matching federated identity record found for presented assertion.',
  700211: 'No matching federated identity record found for presented assertion issuer',
  700212: 'No matching federated identity record found for presented assertion audience',
  700213: 'No matching federated identity record found for presented assertion subject',
  700027: 'Client assertion failed signature validation.',
  700024: 'Client assertion is not within its valid time range.',
};

const refusal = (code, detail = '') => ({
  error: 'invalid_client',
  mapped: { error: 'invalid_client', code, status: 401, message: `${REFUSALS[code]}${detail}` },
  detail: `federated assertion refused (AADSTS${code})`,
});

const isoTime = (seconds) => new Date(seconds * 1000).toISOString().replace('Z', '0000Z');

// A summary of an assertion for the token log: what tests compare, without verifying anything.
export function assertionSummary(assertion) {
  if (typeof assertion !== 'string') return null;
  let claims = {};
  let header = null;
  try {
    claims = decodeJwt(assertion);
    header = decodeProtectedHeader(assertion);
  } catch {
    // Logged as unreadable: the hash still identifies what was sent.
  }
  return {
    jti: claims.jti ?? null,
    iat: claims.iat ?? null,
    sub: claims.sub ?? null,
    aud: claims.aud ?? null,
    // The decoded header and the claim names in order, to compare clients' assertions.
    header,
    claim_names: Object.keys(claims),
    sha256: crypto.createHash('sha256').update(assertion).digest('hex'),
  };
}

// GET over HTTPS trusting the peer's CA; resolves to the parsed JSON body.
function getJson(url, ca) {
  return new Promise((resolve, reject) => {
    const req = https.get(url, { ca, headers: { accept: 'application/json' } }, (res) => {
      const chunks = [];
      res.on('data', (chunk) => chunks.push(chunk));
      res.on('end', () => {
        if (res.statusCode !== 200) {
          reject(new Error(`GET ${url}: HTTP ${res.statusCode}`));
          return;
        }
        try {
          resolve(JSON.parse(Buffer.concat(chunks).toString('utf8')));
        } catch (err) {
          reject(new Error(`GET ${url}: ${err.message}`));
        }
      });
      res.on('error', reject);
    });
    req.on('error', reject);
  });
}

// Starts the cluster issuer; resolves when it listens.
export async function startClusterIssuer({ host, selfHost, pki, log }) {
  const signing = await generateKeyPair('RS256', { extractable: true });
  // A key the cluster does not publish: tokens signed with it fail signature validation.
  const rogue = await generateKeyPair('RS256', { extractable: true });
  const publicJwk = await exportJWK(signing.publicKey);
  const kid = crypto.createHash('sha256').update(`${publicJwk.e}.${publicJwk.n}`).digest('base64url').slice(0, 16);
  // AKS issuers look like https://<region>.oic.prod-aks.azure.com/<tenant>/<cluster guid>/.
  const clusterPath = `/${crypto.randomUUID()}/`;
  const cluster = {
    issuer: undefined, jwksUri: undefined, kid, signing, rogue, ca: pki.ca,
  };

  const server = https.createServer({ cert: pki.cert, key: pki.key }, (req, res) => {
    const path = new URL(req.url, cluster.issuer).pathname;
    const send = (status, body) => {
      const text = JSON.stringify(body);
      res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
      res.end(text);
    };
    if (req.method === 'GET' && path === `${clusterPath}.well-known/openid-configuration`) {
      // What kube-apiserver serves (ServiceAccountIssuerDiscovery).
      send(200, {
        issuer: cluster.issuer,
        jwks_uri: cluster.jwksUri,
        response_types_supported: ['id_token'],
        subject_types_supported: ['public'],
        id_token_signing_alg_values_supported: ['RS256'],
      });
    } else if (req.method === 'GET' && path === `${clusterPath}openid/v1/jwks`) {
      send(200, { keys: [{ ...publicJwk, kid, alg: 'RS256', use: 'sig' }] });
    } else {
      send(404, { error: `no route ${req.method} ${path}` });
    }
  });
  server.on('tlsClientError', (err) => log('cluster issuer TLS client error:', err.message));
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, host, resolve);
  });
  const base = `https://${selfHost}:${server.address().port}`;
  cluster.issuer = `${base}${clusterPath}`;
  cluster.jwksUri = `${cluster.issuer}openid/v1/jwks`;
  log(`cluster issuer ${cluster.issuer}`);
  return cluster;
}

// The federated identity credentials of the peer's apps: issuer, subject and audiences, each
// matched exactly (Entra compares case-sensitively).
export function federatedCredentials(cluster) {
  return [{
    clientId: WORKLOAD_CLIENT_ID,
    name: 'aks-workload',
    issuer: cluster.issuer,
    subject: WORKLOAD_SUBJECT,
    audiences: [TOKEN_EXCHANGE_AUDIENCE],
  }];
}

// POST /_test/workload/token: a service-account token as the kubelet projects it. Input (all
// optional): namespace, service_account, sub (overrides both), aud, iss, issued_ago (seconds
// before now for iat/nbf, default 0), lifetime (default 3600), rogue_key (sign with a key the
// cluster does not publish).
export async function mintServiceAccountToken(cluster, input) {
  const now = Math.floor(Date.now() / 1000);
  const namespace = input.namespace ?? WORKLOAD_NAMESPACE;
  const name = input.service_account ?? WORKLOAD_SERVICE_ACCOUNT;
  const iat = now - (Number(input.issued_ago) || 0);
  const lifetime = input.lifetime === undefined ? SERVICE_ACCOUNT_TOKEN_TTL : Number(input.lifetime);
  const jti = crypto.randomUUID();
  const claims = {
    aud: [input.aud ?? TOKEN_EXCHANGE_AUDIENCE],
    'kubernetes.io': {
      namespace,
      serviceaccount: { name, uid: crypto.randomUUID() },
    },
  };
  const key = input.rogue_key ? cluster.rogue.privateKey : cluster.signing.privateKey;
  const token = await new SignJWT(claims)
    .setProtectedHeader({ alg: 'RS256', kid: cluster.kid })
    .setIssuer(input.iss ?? cluster.issuer)
    .setSubject(input.sub ?? `system:serviceaccount:${namespace}:${name}`)
    .setIssuedAt(iat)
    .setNotBefore(iat)
    .setExpirationTime(iat + lifetime)
    .setJti(jti)
    .sign(key);
  return { token, claims: decodeJwt(token) };
}

// Checks a client assertion as Entra checks one against an app's federated credentials, in
// this order: readable JWT (50027), a record of this app for the issuer (700211), the subject
// (700213) and audience (700212) of that record, the signature through the issuer's JWKS
// fetched from its discovery document (700027), then the time range (700024). Resolves to
// undefined when valid, else to the problem for the Entra-shaped error body.
export async function checkFederatedAssertion(cluster, form, log) {
  const records = federatedCredentials(cluster).filter((r) => r.clientId === form.client_id);
  if (records.length === 0) return refusal(70021);
  const assertion = form.client_assertion;
  let claims;
  try {
    decodeProtectedHeader(assertion);
    claims = decodeJwt(assertion);
  } catch {
    return refusal(50027);
  }
  const byIssuer = records.filter((r) => r.issuer === claims.iss);
  if (byIssuer.length === 0) return refusal(700211, ` '${claims.iss}'.`);
  const bySubject = byIssuer.filter((r) => r.subject === claims.sub);
  if (bySubject.length === 0) {
    return refusal(700213, ` '${claims.sub}'. Please note that the matching is done using a case-sensitive comparison. Check your federated identity credential Subject, Audience and Issuer against the presented assertion.`);
  }
  const audiences = [].concat(claims.aud ?? []);
  if (!bySubject.some((r) => r.audiences.some((a) => audiences.includes(a)))) {
    return refusal(700212, ` '${audiences.join(', ')}'.`);
  }
  try {
    const discovery = await getJson(`${claims.iss.replace(/\/?$/, '/')}.well-known/openid-configuration`, cluster.ca);
    const jwks = await getJson(discovery.jwks_uri, cluster.ca);
    await compactVerify(assertion, createLocalJWKSet(jwks), { algorithms: ['RS256'] });
  } catch (err) {
    log(`federated assertion signature: ${err.message}`);
    return refusal(700027);
  }
  const now = Math.floor(Date.now() / 1000);
  const validFrom = typeof claims.nbf === 'number' ? claims.nbf : 0;
  if (typeof claims.exp !== 'number' || claims.exp + CLOCK_SKEW <= now || validFrom - CLOCK_SKEW > now) {
    return refusal(700024, ` Current time: ${isoTime(now)}, assertion valid from ${isoTime(validFrom)}, expiry time of assertion ${isoTime(claims.exp ?? 0)}.`);
  }
  return undefined;
}
