// Entra-shaped OAuth 2.0 / OpenID Connect test peer for tower-identity.
//
// A small HTTPS front around node `oidc-provider`: one Provider per tenant path segment, all
// sharing one in-memory store and one signing key, with Entra's paths, Entra-like token
// responses and errors, a few test-only control endpoints and a protected resource.
// See README.md next to this file for the contract the Rust harness relies on.
//
// stdout carries exactly one line (the ready JSON); everything else goes to stderr.

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as https from 'node:https';
import * as path from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

import {
  JWT_BEARER, WORKLOAD_CLIENT_ID, assertionSummary, checkFederatedAssertion,
  mintServiceAccountToken, startClusterIssuer,
} from './federated.mjs';

// oidc-provider prints notices with console.info (stdout). Route every console method that
// would write to stdout to stderr *before* loading it, so stdout stays a one-line channel.
for (const method of ['log', 'info', 'debug']) {
  console[method] = (...args) => console.error(...args);
}
// Loaded in main(), concurrently with the key and certificate generation.
let Provider;

// ---------------------------------------------------------------------------------------------
// Constants: clients, tenants, resources
// ---------------------------------------------------------------------------------------------

const CONFIDENTIAL_CLIENT_ID = '11111111-1111-1111-1111-111111111111';
const CONFIDENTIAL_CLIENT_SECRET = 'peer-secret-1';
const FOCI_CLIENT_ID = '04b07795-8ddb-461a-bbee-02f9e1bf7b46'; // Azure CLI
const PUBLIC_CLIENT_ID = '22222222-2222-2222-2222-222222222222';
const FOCI_CLIENTS = new Set([FOCI_CLIENT_ID]);
const DEVICE_CODE_GRANT = 'urn:ietf:params:oauth:grant-type:device_code';
// Entra's device authorization answer: poll every 5 s, the code lives 900 s.
const DEVICE_CODE_INTERVAL = 5;
const DEVICE_CODE_TTL = 900;
// The workload identity app authenticates with a federated assertion only. Once the front has
// checked the assertion it hands oidc-provider this secret instead, which nobody else knows.
const WORKLOAD_INTERNAL_SECRET = crypto.randomBytes(32).toString('base64url');

const CLIENTS = [
  {
    client_id: CONFIDENTIAL_CLIENT_ID,
    client_secret: CONFIDENTIAL_CLIENT_SECRET,
    // oidc-provider accepts both the form body and Basic for either secret method, so the
    // registered method only documents what Entra clients normally do.
    token_endpoint_auth_method: 'client_secret_post',
    grant_types: ['client_credentials', 'authorization_code', 'refresh_token'],
    response_types: ['code'],
    redirect_uris: ['http://localhost:8400/callback'],
    scope: 'openid profile email offline_access',
  },
  ...[FOCI_CLIENT_ID, PUBLIC_CLIENT_ID].map((clientId) => ({
    client_id: clientId,
    token_endpoint_auth_method: 'none',
    // "native" lets http://localhost match any loopback port, as Entra does for public clients.
    application_type: 'native',
    grant_types: ['authorization_code', 'refresh_token', DEVICE_CODE_GRANT],
    response_types: ['code'],
    redirect_uris: ['http://localhost', 'http://localhost:8400/callback'],
    scope: 'openid profile email offline_access',
  })),
  {
    client_id: WORKLOAD_CLIENT_ID,
    client_secret: WORKLOAD_INTERNAL_SECRET,
    token_endpoint_auth_method: 'client_secret_post',
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
  },
];

// Resources every user sign-in is consented for, so a refresh token can later be redeemed for
// any of them (Entra refresh tokens are not bound to the first scope set).
const KNOWN_RESOURCES = ['https://resource.test', 'https://other.test'];
const PROTECTED_RESOURCE_AUDIENCE = 'https://resource.test';

// Fixed tenant ids for the names tests use; anything else gets a deterministic GUID.
const TENANT_GUIDS = {
  contoso: '72f988bf-86f1-41af-91ab-2d7cd011db47',
  fabrikam: 'f8cdef31-a31e-4b4a-93e4-5f571e91255a',
};
// Tenant aliases that are not a directory: tokens carry the user's home tenant instead.
const MULTI_TENANT_ALIASES = new Set(['common', 'organizations', 'consumers']);
const TENANT_RE = /^[A-Za-z0-9.-]+$/;
const GUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

const DEFAULT_LOGIN_HINT = 'user@contoso.com';
const ACCESS_TOKEN_TTL = 3600;

// ---------------------------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------------------------

function usage(message) {
  process.stderr.write(`${message}\nusage: node server.mjs --dir <existing writable dir> `
    + '[--port <n, default 0>] [--host <default 127.0.0.1>] [--rotate-refresh-tokens]\n');
  process.exit(2);
}

function parseArgs(argv) {
  const opts = { dir: undefined, port: 0, host: '127.0.0.1', rotateRefreshTokens: false };
  for (let i = 0; i < argv.length; i += 1) {
    const arg = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) usage(`missing value for ${arg}`);
      i += 1;
      return argv[i];
    };
    switch (arg) {
      case '--dir': opts.dir = value(); break;
      case '--port': opts.port = Number(value()); break;
      case '--host': opts.host = value(); break;
      case '--rotate-refresh-tokens': opts.rotateRefreshTokens = true; break;
      default: usage(`unknown argument: ${arg}`);
    }
  }
  if (!opts.dir) usage('--dir is required');
  opts.dir = path.resolve(opts.dir);
  try {
    fs.accessSync(opts.dir, fs.constants.W_OK);
    if (!fs.statSync(opts.dir).isDirectory()) usage(`--dir ${opts.dir} is not a directory`);
  } catch {
    usage(`--dir ${opts.dir} must be an existing writable directory`);
  }
  if (!Number.isInteger(opts.port) || opts.port < 0 || opts.port > 65535) usage('--port must be 0-65535');
  return opts;
}

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

const log = (...args) => console.error('[oidc-peer]', ...args);

// A GUID-shaped string derived from a hash, so the same input always maps to the same id.
function guidFromString(input) {
  const h = crypto.createHash('sha256').update(input).digest('hex');
  const variant = ((parseInt(h[16], 16) & 0x3) | 0x8).toString(16);
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-5${h.slice(13, 16)}-${variant}${h.slice(17, 20)}-${h.slice(20, 32)}`;
}

function tenantGuid(tenant) {
  const lower = tenant.toLowerCase();
  if (TENANT_GUIDS[lower]) return TENANT_GUIDS[lower];
  if (GUID_RE.test(tenant)) return lower;
  return guidFromString(`tenant:${lower}`);
}

const b64url = (value) => Buffer.from(value).toString('base64url');

// Entra's timestamp format in error bodies: "2024-05-01 00:00:00Z".
const entraTimestamp = () => `${new Date().toISOString().slice(0, 19).replace('T', ' ')}Z`;

function sendJson(res, status, body, headers = {}) {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(text),
    'cache-control': 'no-store',
    ...headers,
  });
  res.end(text);
}

async function readBody(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return Buffer.concat(chunks);
}

function parseJsonBody(buffer) {
  if (buffer.length === 0) return {};
  const value = JSON.parse(buffer.toString('utf8'));
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new Error('body must be a JSON object');
  }
  return value;
}

// Form fields as received; a repeated field becomes an array.
function parseForm(buffer) {
  const form = {};
  for (const [key, value] of new URLSearchParams(buffer.toString('utf8'))) {
    if (key in form) form[key] = [].concat(form[key], value);
    else form[key] = value;
  }
  return form;
}

function basicAuthClientId(header) {
  if (typeof header !== 'string') return null;
  const [scheme, token] = header.split(' ');
  if (!token || scheme.toLowerCase() !== 'basic') return null;
  const decoded = Buffer.from(token, 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  if (colon === -1) return null;
  try {
    return decodeURIComponent(decoded.slice(0, colon).replace(/\+/g, '%20'));
  } catch {
    return decoded.slice(0, colon);
  }
}

const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

// ---------------------------------------------------------------------------------------------
// Throwaway PKI made with the openssl CLI (rustls wants a real CA and a proper v3 leaf)
// ---------------------------------------------------------------------------------------------

function randomSerial() {
  // Positive (top bit clear), 16 bytes: within RFC 5280's 20-octet limit.
  const bytes = crypto.randomBytes(16);
  bytes[0] &= 0x7f;
  bytes[0] |= 0x10;
  return `0x${bytes.toString('hex')}`;
}

async function makePki(dir) {
  const file = (name) => path.join(dir, name);
  fs.writeFileSync(file('openssl.cnf'), [
    '[req]',
    'distinguished_name = dn',
    'prompt = no',
    '[dn]',
    'CN = placeholder',
    '[v3_ca]',
    'basicConstraints = critical, CA:TRUE',
    'keyUsage = critical, keyCertSign, cRLSign',
    'subjectKeyIdentifier = hash',
    '[v3_leaf]',
    'basicConstraints = critical, CA:FALSE',
    'keyUsage = critical, digitalSignature',
    'extendedKeyUsage = serverAuth',
    'subjectAltName = IP:127.0.0.1, DNS:localhost',
    'subjectKeyIdentifier = hash',
    'authorityKeyIdentifier = keyid',
    '',
  ].join('\n'));

  const run = promisify(execFile);
  const openssl = (...args) => run('openssl', args);
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];

  await openssl('req', '-x509', ...ec, '-config', file('openssl.cnf'), '-extensions', 'v3_ca',
    '-subj', '/CN=tower-identity oidc peer test CA', '-days', '7', '-sha256',
    '-set_serial', randomSerial(), '-keyout', file('ca.key'), '-out', file('ca.pem'));
  await openssl('req', '-new', ...ec, '-config', file('openssl.cnf'),
    '-subj', '/CN=localhost', '-keyout', file('server.key'), '-out', file('server.csr'));
  await openssl('x509', '-req', '-in', file('server.csr'), '-CA', file('ca.pem'), '-CAkey', file('ca.key'),
    '-set_serial', randomSerial(), '-days', '7', '-sha256',
    '-extfile', file('openssl.cnf'), '-extensions', 'v3_leaf', '-out', file('server.pem'));

  return {
    caPath: file('ca.pem'),
    ca: fs.readFileSync(file('ca.pem')),
    cert: fs.readFileSync(file('server.pem')),
    key: fs.readFileSync(file('server.key')),
  };
}

// ---------------------------------------------------------------------------------------------
// Shared state: storage, signing key, accounts, logs
// ---------------------------------------------------------------------------------------------

// One store for every tenant's Provider: that is what lets a refresh token issued under
// /contoso be redeemed at /organizations.
const store = new Map(); // `${model}:${id}` -> { payload, expiresAt }
const grantIndex = new Map(); // grantId -> Set of store keys
const uidIndex = new Map(); // session uid -> store key
const userCodeIndex = new Map(); // user code -> store key

class SharedMemoryAdapter {
  constructor(model) {
    this.model = model;
  }

  key(id) {
    return `${this.model}:${id}`;
  }

  async upsert(id, payload, expiresIn) {
    const key = this.key(id);
    store.set(key, {
      payload: structuredClone(payload),
      expiresAt: expiresIn ? Date.now() + expiresIn * 1000 : undefined,
    });
    if (payload.grantId) {
      if (!grantIndex.has(payload.grantId)) grantIndex.set(payload.grantId, new Set());
      grantIndex.get(payload.grantId).add(key);
    }
    if (payload.uid) uidIndex.set(payload.uid, key);
    if (payload.userCode) userCodeIndex.set(payload.userCode, key);
  }

  async find(id) {
    return SharedMemoryAdapter.read(this.key(id));
  }

  async findByUid(uid) {
    const key = uidIndex.get(uid);
    return key ? SharedMemoryAdapter.read(key) : undefined;
  }

  async findByUserCode(userCode) {
    const key = userCodeIndex.get(userCode);
    return key ? SharedMemoryAdapter.read(key) : undefined;
  }

  async consume(id) {
    const entry = store.get(this.key(id));
    if (entry) entry.payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) {
    store.delete(this.key(id));
  }

  async revokeByGrantId(grantId) {
    for (const key of grantIndex.get(grantId) ?? []) store.delete(key);
    grantIndex.delete(grantId);
  }

  static read(key) {
    const entry = store.get(key);
    if (!entry) return undefined;
    if (entry.expiresAt !== undefined && entry.expiresAt <= Date.now()) {
      store.delete(key);
      return undefined;
    }
    return structuredClone(entry.payload);
  }

  // Raw look-up used by the front's pre-checks (no Provider context needed).
  static peek(model, id) {
    return typeof id === 'string' ? SharedMemoryAdapter.read(`${model}:${id}`) : undefined;
  }
}

// One RS256 key for every tenant, so any tenant's token validates everywhere and the protected
// resource can check signatures without fetching JWKS.
async function makeSigningKey() {
  const generate = promisify(crypto.generateKeyPair);
  const { privateKey, publicKey } = await generate('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  const kid = crypto.createHash('sha256').update(`${jwk.e}.${jwk.n}`).digest('base64url').slice(0, 16);
  return { jwk: { ...jwk, kid, alg: 'RS256', use: 'sig' }, publicKey, kid };
}

// Accounts are created by the login interaction: accountId (= sub = oid) -> profile.
const accounts = new Map();

function accountIdFor(loginHint) {
  return guidFromString(`user:${loginHint.toLowerCase()}`);
}

// The home tenant is where the account first signed in; at /common or /organizations it is
// taken from the login hint's domain (alice@contoso.com -> contoso).
function recordAccount(loginHint, loginTenant) {
  const accountId = accountIdFor(loginHint);
  if (!accounts.has(accountId)) {
    const domainLabel = (loginHint.split('@')[1] ?? 'contoso').split('.')[0] || 'contoso';
    const home = MULTI_TENANT_ALIASES.has(loginTenant.toLowerCase()) ? domainLabel : loginTenant;
    const local = loginHint.split('@')[0];
    accounts.set(accountId, {
      accountId,
      loginHint,
      name: local.charAt(0).toUpperCase() + local.slice(1),
      homeTenantId: tenantGuid(home),
    });
  }
  return accounts.get(accountId);
}

// The tenant id stamped into tokens answered at `tenant` for `accountId` (if any).
function tokenTenantId(tenant, accountId) {
  const account = accountId ? accounts.get(accountId) : undefined;
  if (account && MULTI_TENANT_ALIASES.has(tenant.toLowerCase())) return account.homeTenantId;
  return tenantGuid(tenant);
}

// Everything the token endpoint received, for the tests to inspect over GET /_test/log.
const tokenLog = [];

// Device flow controls: the login hint each user code signs in as (set by
// /_test/device/approve), and how many of a tenant's next device code polls get `slow_down`.
const deviceLoginHints = new Map(); // normalized user code -> login hint
const slowDownPolls = new Map(); // tenant -> count
const normalizeUserCode = (code) => String(code).toUpperCase().replace(/\W/g, '');

// Programmed answers for the protected resource, one consumed per request.
const resourceQueue = [];
let resourceRequestCount = 0;

// ---------------------------------------------------------------------------------------------
// Scopes and resources: Entra clients send "https://X/.default"; oidc-provider wants resource
// indicators. The resource of a scope is everything before its last "/".
// ---------------------------------------------------------------------------------------------

function resourceOfScope(scope) {
  // Any absolute URI with a path: https://resource.test/.default, api://app-id/.default.
  if (!/^[a-z][a-z0-9+.-]*:\/\/[^/]+\/.+/i.test(scope)) return undefined;
  return scope.slice(0, scope.lastIndexOf('/'));
}

function requestedScopes(ctx) {
  const scope = ctx.oidc.params?.scope ?? ctx.oidc.body?.scope ?? '';
  return String(scope).split(' ').filter(Boolean);
}

function resourcesInScopes(scopes) {
  return [...new Set(scopes.map(resourceOfScope).filter(Boolean))];
}

// oidc-provider asks for the resource when the request has no `resource` parameter. `oneOf`
// is given when a grant holds several resources and one must be picked for this token.
async function defaultResource(ctx, _client, oneOf) {
  const fromScope = resourcesInScopes(requestedScopes(ctx));
  if (oneOf) {
    const allowed = [].concat(oneOf);
    return fromScope.find((r) => allowed.includes(r)) ?? allowed[0];
  }
  if (fromScope.length === 0) return undefined;
  return fromScope.length === 1 ? fromScope[0] : fromScope;
}

// Every https resource exists; its scopes are ".default" plus whatever the request names.
async function getResourceServerInfo(ctx, resource) {
  const scopes = new Set([`${resource}/.default`]);
  for (const scope of requestedScopes(ctx)) {
    if (resourceOfScope(scope) === resource) scopes.add(scope);
  }
  return {
    scope: [...scopes].join(' '),
    audience: resource,
    accessTokenFormat: 'jwt',
    accessTokenTTL: ACCESS_TOKEN_TTL,
    jwt: { sign: { alg: 'RS256' } },
  };
}

// Entra's `scp` lists scope names without the resource prefix; ".default" stands for the
// app's consented permissions, shown here as "user_impersonation".
function scpClaim(scope, resource) {
  const names = String(scope ?? '').split(' ').filter(Boolean).map((s) => {
    const name = resource && s.startsWith(`${resource}/`) ? s.slice(resource.length + 1) : s;
    return name === '.default' ? 'user_impersonation' : name;
  });
  return names.length ? [...new Set(names)].join(' ') : undefined;
}

// ---------------------------------------------------------------------------------------------
// Entra-shaped token responses and errors
// ---------------------------------------------------------------------------------------------

const AADSTS = {
  7000215: 'Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app.',
  7000218: "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
  54005: 'OAuth2 Authorization code was already redeemed, please retry with a new valid code or use an existing refresh token.',
  50173: 'The provided grant has expired due to it being revoked, a fresh auth token is needed. The user might have changed or reset their password.',
  70003: 'The app requested an unsupported grant type.',
  70011: "The provided value for the input parameter 'scope' is not valid.",
  1002012: 'The provided value for scope is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI).',
  28000: 'Provided value for the input parameter scope is not valid because it contains more than one resource.',
  500011: 'The resource principal was not found in the tenant.',
  90000: 'The request could not be processed.',
  70016: 'OAuth 2.0 device flow error. Authorization is pending. Continue polling.',
  70000: 'The user declined the authorization request.',
  70018: 'Invalid verification code due to the user typing in a wrong user code for the device code flow. Authorization is not approved.',
  70019: 'Verification code expired. Have the user retry the sign-in.',
};

// Maps an oidc-provider error to Entra's error, AADSTS code and HTTP status.
function classifyError({ error, detail, description, grantType, clientId, tenant }) {
  const text = `${detail ?? ''} ${description ?? ''}`;
  // The device code grant's answers while the user has not finished (RFC 8628 §3.5), in
  // Entra's names (access_denied is authorization_declined there).
  if (grantType === DEVICE_CODE_GRANT) {
    switch (error) {
      case 'authorization_pending': return { error, code: 70016, status: 400 };
      // Not in Entra's table (msal handles it as RFC 8628 says): the generic code.
      case 'slow_down': return { error, code: 90000, status: 400 };
      case 'access_denied': return { error: 'authorization_declined', code: 70000, status: 400 };
      case 'expired_token': return { error, code: 70019, status: 400 };
      case 'invalid_grant': return { error: 'bad_verification_code', code: 70018, status: 400 };
      default: break;
    }
  }
  switch (error) {
    case 'invalid_client':
      if (/client not found/.test(text)) {
        return {
          error: 'unauthorized_client',
          code: 700016,
          status: 400,
          message: `Application with identifier '${clientId}' was not found in the directory '${tenant}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant.`,
        };
      }
      if (/authentication mechanism does not match/.test(text)) {
        return { error, code: 7000218, status: 401 };
      }
      // private_key_jwt failures: Entra's codes for a bad time range and for the rest.
      if (/jwt expired|jwt not active|"(exp|nbf|iat)" claim|timestamp check failed/.test(text)) {
        return { error, code: 700024, status: 401, message: 'Client assertion is not within its valid time range.' };
      }
      if (/assertion|audience|signature|jti|JWT|alg mismatch/.test(text)) {
        return { error, code: 700027, status: 401, message: 'Client assertion failed signature validation.' };
      }
      return { error, code: 7000215, status: 401 };
    case 'invalid_grant':
      if (grantType === 'authorization_code') return { error, code: 54005, status: 400 };
      if (grantType === 'refresh_token') {
        // Entra's code for a revoked grant: the token is dead for every request.
        return { error, code: 50173, status: 400, extra: { suberror: 'bad_token' } };
      }
      return { error, code: 90000, status: 400 };
    case 'unauthorized_client':
      return {
        error,
        code: 700016,
        status: 400,
        message: `Application with identifier '${clientId}' was not found in the directory '${tenant}'.`,
      };
    case 'unsupported_grant_type':
      return { error, code: 70003, status: 400 };
    case 'invalid_scope':
      if (/client credential flows/.test(text)) return { error, code: 1002012, status: 400 };
      return { error, code: 70011, status: 400 };
    case 'invalid_target':
      if (/single resource/.test(text)) return { error, code: 28000, status: 400 };
      return { error, code: 500011, status: 400 };
    case 'invalid_request':
      if (/grant type is not allowed/.test(text)) {
        return { error: 'unauthorized_client', code: 70003, status: 400 };
      }
      if (/missing required parameter '([^']+)'/.test(text)) {
        const [, name] = /missing required parameter '([^']+)'/.exec(text);
        return { error, code: 900144, status: 400, message: `The request body must contain the following parameter: '${name}'.` };
      }
      return { error, code: 90000, status: 400 };
    default:
      return { error: error ?? 'server_error', code: 90000, status: 400 };
  }
}

// The correlation id echoes the client's request id when it is a UUID, as Entra does.
function correlationIdFor(headers) {
  const id = headers['x-ms-client-request-id'] ?? headers['client-request-id'];
  return typeof id === 'string' && GUID_RE.test(id) ? id.toLowerCase() : crypto.randomUUID();
}

function entraErrorBody(problem, headers, original) {
  // The federated assertion check names Entra's answer itself.
  const mapped = problem.mapped ?? classifyError(problem);
  const traceId = crypto.randomUUID();
  const correlationId = correlationIdFor(headers);
  const timestamp = entraTimestamp();
  const message = mapped.message ?? AADSTS[mapped.code];
  // The provider's own wording stays visible for whoever debugs a failing test.
  const peerDetail = [problem.description, problem.detail].filter(Boolean).join(': ');
  return {
    status: mapped.status,
    body: {
      ...original,
      error: mapped.error,
      error_description: `AADSTS${mapped.code}: ${message}${peerDetail ? ` [peer: ${peerDetail}]` : ''}`
        + `\r\nTrace ID: ${traceId}\r\nCorrelation ID: ${correlationId}\r\nTimestamp: ${timestamp}`,
      error_codes: [mapped.code],
      timestamp,
      trace_id: traceId,
      correlation_id: correlationId,
      ...mapped.extra,
    },
    headers: { 'x-ms-request-id': traceId, 'client-request-id': correlationId },
  };
}

// Adds Entra's fields to a successful token response.
function entraSuccessBody(body, { form, clientId, accountId, tenant }) {
  const out = { ...body };
  if (typeof out.expires_in === 'number') out.ext_expires_in = out.expires_in;
  const userGrant = ['authorization_code', 'refresh_token', DEVICE_CODE_GRANT].includes(form.grant_type);
  if (userGrant && accountId) {
    if (form.client_info === '1') {
      const account = accounts.get(accountId);
      const utid = account?.homeTenantId ?? tokenTenantId(tenant, accountId);
      out.client_info = b64url(JSON.stringify({ uid: accountId, utid }));
    }
    if (FOCI_CLIENTS.has(clientId)) out.foci = '1';
  }
  return out;
}

// Koa middleware on each Provider: rewrites token-endpoint answers into Entra's shape.
function entraTokenEndpointMiddleware(tenant) {
  return async function entraShape(ctx, next) {
    await next();
    if (ctx.oidc?.route === 'device_authorization' && ctx.body && typeof ctx.body === 'object') {
      entraDeviceAuthorizationBody(ctx, tenant);
      return;
    }
    if (ctx.oidc?.route !== 'token' || !ctx.body || typeof ctx.body !== 'object') return;
    const form = ctx.oidc.body ?? {};
    const clientId = ctx.oidc.client?.clientId ?? form.client_id
      ?? basicAuthClientId(ctx.get('authorization'));
    if (ctx.status >= 400) {
      const err = ctx.state.peerError;
      const { status, body, headers } = entraErrorBody({
        error: ctx.body.error,
        description: ctx.body.error_description,
        detail: err?.error_detail,
        grantType: form.grant_type,
        clientId,
        tenant,
      }, ctx.headers, ctx.body);
      ctx.status = status;
      ctx.body = body;
      ctx.set(headers);
      return;
    }
    ctx.body = entraSuccessBody(ctx.body, {
      form, clientId, accountId: ctx.oidc.entities.Account?.accountId, tenant,
    });
    ctx.set('client-request-id', correlationIdFor(ctx.headers));
  };
}

// The device authorization answer as Entra gives it: an interval and a message, no
// verification_uri_complete; errors in Entra's JSON.
function entraDeviceAuthorizationBody(ctx, tenant) {
  if (ctx.status >= 400) {
    const { status, body, headers } = entraErrorBody({
      error: ctx.body.error,
      description: ctx.body.error_description,
      clientId: ctx.oidc.client?.clientId ?? ctx.oidc.body?.client_id,
      tenant,
    }, ctx.headers, ctx.body);
    ctx.status = status;
    ctx.body = body;
    ctx.set(headers);
    return;
  }
  const { verification_uri_complete: _complete, ...body } = ctx.body;
  ctx.body = {
    ...body,
    interval: DEVICE_CODE_INTERVAL,
    message: `To sign in, use a web browser to open the page ${body.verification_uri} and enter the code ${body.user_code} to authenticate.`,
  };
  ctx.set('client-request-id', correlationIdFor(ctx.headers));
}

// ---------------------------------------------------------------------------------------------
// Providers, one per tenant, created on first use
// ---------------------------------------------------------------------------------------------

// The paths under a tenant: Entra's v2.0 endpoints, except for the AD FS tenant `adfs`,
// whose openid-configuration (no v2.0) names /adfs/oauth2/token and /adfs/oauth2/devicecode.
function endpointPaths(tenant) {
  const version = tenant === 'adfs' ? '' : '/v2.0';
  return {
    authorization: `/oauth2${version}/authorize`,
    token: `/oauth2${version}/token`,
    device_authorization: `/oauth2${version}/devicecode`,
  };
}

function providerConfiguration(tenant, { signingJwk, cookieKey, rotateRefreshTokens }) {
  return {
    adapter: SharedMemoryAdapter,
    clients: CLIENTS,
    jwks: { keys: [signingJwk] },
    cookies: { keys: [cookieKey] },
    routes: {
      ...endpointPaths(tenant),
      code_verification: '/device',
      jwks: '/discovery/v2.0/keys',
      end_session: '/oauth2/v2.0/logout',
      userinfo: '/openid/userinfo',
    },
    scopes: ['openid', 'profile', 'email', 'offline_access'],
    claims: {
      openid: ['sub', 'tid', 'oid'],
      profile: ['name', 'preferred_username'],
      email: ['email'],
    },
    // Put profile claims in the id token itself, as Entra does.
    conformIdTokenClaims: false,
    async findAccount(ctx, sub) {
      const account = accounts.get(sub);
      if (!account) return undefined;
      return {
        accountId: sub,
        async claims() {
          return {
            sub,
            oid: sub,
            tid: tokenTenantId(tenant, sub),
            name: account.name,
            preferred_username: account.loginHint,
            email: account.loginHint,
          };
        },
      };
    },
    async extraTokenClaims(ctx, token) {
      const accountId = token.accountId;
      const resource = token.resourceServer?.audience;
      const claims = {
        tid: tokenTenantId(tenant, accountId),
        oid: accountId ?? guidFromString(`sp:${token.clientId}`),
        azp: token.clientId,
      };
      if (accountId) claims.scp = scpClaim(token.scope, resource);
      else claims.idtyp = 'app';
      return claims;
    },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      deviceFlow: {
        enabled: true,
        // Plain pages (the defaults print "you should change this" notices on every use).
        async userCodeInputSource(ctx, form) { ctx.body = `<html><body>${form}</body></html>`; },
        async userCodeConfirmSource(ctx, form) { ctx.body = `<html><body>${form}</body></html>`; },
        async successSource(ctx) { ctx.body = '<html><body>signed in</body></html>'; },
      },
      rpInitiatedLogout: { enabled: false },
      resourceIndicators: {
        enabled: true,
        defaultResource,
        useGrantedResource: () => true,
        getResourceServerInfo,
      },
    },
    // Only the authorization code flow (no implicit/hybrid), as the clients are registered.
    responseTypes: ['code'],
    pkce: { required: () => false },
    // Entra keeps refresh tokens valid after use; rotation is opt-in (--rotate-refresh-tokens).
    rotateRefreshToken: () => rotateRefreshTokens,
    // Explicit values also keep oidc-provider from printing "you SHOULD change" notices.
    ttl: {
      AccessToken: ACCESS_TOKEN_TTL,
      ClientCredentials: ACCESS_TOKEN_TTL,
      AuthorizationCode: 600,
      DeviceCode: DEVICE_CODE_TTL,
      IdToken: 3600,
      RefreshToken: 90 * 24 * 3600,
      Interaction: 600,
      Session: 24 * 3600,
      Grant: 90 * 24 * 3600,
    },
    clientBasedCORS: () => true,
    interactions: {
      url: (_ctx, interaction) => `/${tenant}/_interaction/${interaction.uid}`,
    },
    // Errors are JSON whatever the client accepts.
    async renderError(ctx, out) {
      ctx.type = 'json';
      ctx.body = out;
    },
  };
}

function createTenantProvider(tenant, options) {
  const issuer = `${options.base}/${tenant}/v2.0`;
  const provider = new Provider(issuer, providerConfiguration(tenant, options));
  provider.use(entraTokenEndpointMiddleware(tenant));
  // Keep the error object so the Entra rewrite can use oidc-provider's internal detail.
  provider.on('grant.error', (ctx, err) => {
    ctx.state.peerError = err;
    log(`${tenant}: token error ${err.error ?? err.message}${err.error_detail ? ` (${err.error_detail})` : ''}`);
  });
  provider.on('server_error', (ctx, err) => log(`${tenant}: server error`, err));
  provider.on('authorization.error', (ctx, err) => log(`${tenant}: authorization error ${err.message} ${err.error_description ?? ''}`));
  return { tenant, provider, handle: provider.callback() };
}

// ---------------------------------------------------------------------------------------------
// The interaction step: log in and consent without a person
// ---------------------------------------------------------------------------------------------

async function completeInteraction(tenantProvider, req, res) {
  const { provider, tenant } = tenantProvider;
  const details = await provider.interactionDetails(req, res);
  const { prompt, params } = details;

  if (prompt.name === 'login') {
    // A device code sign-in signs in whom /_test/device/approve named for its user code.
    const deviceCode = details.deviceCode ? SharedMemoryAdapter.peek('DeviceCode', details.deviceCode) : undefined;
    const deviceHint = deviceCode ? deviceLoginHints.get(deviceCode.userCode) : undefined;
    const loginHint = deviceHint || params.login_hint || DEFAULT_LOGIN_HINT;
    const account = recordAccount(loginHint, tenant);
    await provider.interactionFinished(req, res, { login: { accountId: account.accountId } }, {
      mergeWithLastSubmission: false,
    });
    return;
  }

  if (prompt.name === 'consent') {
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: details.session.accountId, clientId: params.client_id });
    const missing = prompt.details;
    if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
    if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
    for (const [resource, scopes] of Object.entries(missing.missingResourceScopes ?? {})) {
      grant.addResourceScope(resource, scopes.join(' '));
    }
    // Consent to every known resource so a later refresh may ask for any of them.
    for (const resource of KNOWN_RESOURCES) grant.addResourceScope(resource, `${resource}/.default`);
    const grantId = await grant.save();
    await provider.interactionFinished(req, res, { consent: { grantId } }, {
      mergeWithLastSubmission: true,
    });
    return;
  }

  throw new Error(`unsupported interaction prompt: ${prompt.name}`);
}

// Authorize requests get prompt=consent (oidc-provider drops offline_access otherwise) and the
// known resources' ".default" scopes (so the code, hence the refresh token, covers them all).
function rewriteAuthorizeQuery(search) {
  const query = new URLSearchParams(search);
  query.set('prompt', 'consent');
  const scopes = (query.get('scope') ?? '').split(' ').filter(Boolean);
  for (const resource of KNOWN_RESOURCES) {
    if (!scopes.some((s) => resourceOfScope(s) === resource)) scopes.push(`${resource}/.default`);
  }
  query.set('scope', scopes.join(' '));
  return query.toString();
}

// ---------------------------------------------------------------------------------------------
// Test-only: drive authorize -> interactions -> redirect over HTTPS to ourselves
// ---------------------------------------------------------------------------------------------

class CookieJar {
  #cookies = new Map();

  store(setCookieHeaders = []) {
    for (const header of setCookieHeaders) {
      const [pair, ...attrs] = header.split(';');
      const eq = pair.indexOf('=');
      const name = pair.slice(0, eq).trim();
      const value = pair.slice(eq + 1).trim();
      const expires = attrs.find((a) => a.trim().toLowerCase().startsWith('expires='));
      const expired = expires && Date.parse(expires.split('=')[1]) <= Date.now();
      if (!value || expired) this.#cookies.delete(name);
      else this.#cookies.set(name, value);
    }
  }

  header() {
    return [...this.#cookies].map(([name, value]) => `${name}=${value}`).join('; ');
  }
}

function selfGet(server, url, jar, form) {
  return new Promise((resolve, reject) => {
    const target = new URL(url);
    const payload = form ? new URLSearchParams(form).toString() : undefined;
    const req = https.request({
      host: server.selfHost,
      port: server.port,
      path: `${target.pathname}${target.search}`,
      method: form ? 'POST' : 'GET',
      ca: server.pki.ca,
      headers: {
        cookie: jar.header(),
        accept: form ? 'text/html' : 'application/json',
        ...(form ? { 'content-type': 'application/x-www-form-urlencoded', 'content-length': Buffer.byteLength(payload) } : {}),
      },
    }, (res) => {
      readBody(res).then((body) => {
        jar.store(res.headers['set-cookie']);
        resolve({ status: res.statusCode, location: res.headers.location, body: body.toString('utf8') });
      }, reject);
    });
    req.on('error', reject);
    req.end(payload);
  });
}

class TestError extends Error {
  constructor(status, message, extra = {}) {
    super(message);
    this.status = status;
    this.extra = extra;
  }
}

async function testAuthorize(server, input) {
  const tenant = input.tenant ?? 'contoso';
  if (!TENANT_RE.test(tenant)) throw new TestError(400, 'tenant must match [A-Za-z0-9.-]+');
  for (const field of ['client_id', 'redirect_uri']) {
    if (typeof input[field] !== 'string' || !input[field]) throw new TestError(400, `${field} is required`);
  }
  const query = new URLSearchParams({
    client_id: input.client_id,
    redirect_uri: input.redirect_uri,
    response_type: 'code',
    scope: input.scope ?? 'openid profile offline_access https://resource.test/.default',
    login_hint: input.login_hint ?? DEFAULT_LOGIN_HINT,
  });
  for (const field of ['code_challenge', 'code_challenge_method', 'state', 'nonce']) {
    if (input[field] !== undefined) query.set(field, String(input[field]));
  }

  const jar = new CookieJar();
  let url = `${server.base}/${tenant}${endpointPaths(tenant).authorization}?${query}`;
  for (let hop = 0; hop < 10; hop += 1) {
    const answer = await selfGet(server, url, jar);
    if (answer.status < 300 || answer.status > 399 || !answer.location) {
      const status = answer.status >= 400 && answer.status < 500 ? 400 : 502;
      throw new TestError(status, `authorize chain stopped with HTTP ${answer.status}`, { url, body: answer.body });
    }
    const next = new URL(answer.location, url);
    // URL drops a default port (:443) from origin; compare origins, not strings.
    if (next.origin !== new URL(server.base).origin) {
      // Report the redirect exactly as sent (URL.href would add a "/" to a bare loopback host).
      const redirect = /^[a-z][a-z0-9+.-]*:/i.test(answer.location) ? answer.location : next.href;
      const params = next.searchParams;
      if (params.get('error')) {
        throw new TestError(400, `authorization failed: ${params.get('error')}`, {
          error: params.get('error'),
          error_description: params.get('error_description'),
          redirect,
        });
      }
      const code = params.get('code');
      if (!code) throw new TestError(502, 'redirect without code', { redirect });
      return { code, redirect };
    }
    url = next.href;
  }
  throw new TestError(502, 'too many redirects in the authorize chain');
}

// ---------------------------------------------------------------------------------------------
// Test-only: the user's side of the device code flow, through oidc-provider's own pages
// ---------------------------------------------------------------------------------------------

const xsrfOf = (html) => /name="xsrf" value="([^"]+)"/.exec(html)?.[1];

// Opens the verification page with the user code and submits it; `abort` declines at the
// confirmation page, otherwise it confirms and the login and consent interactions follow.
async function deviceUserFlow(server, input, { abort }) {
  const tenant = input.tenant ?? 'contoso';
  if (!TENANT_RE.test(tenant)) throw new TestError(400, 'tenant must match [A-Za-z0-9.-]+');
  if (typeof input.user_code !== 'string' || !input.user_code) throw new TestError(400, 'user_code is required');
  const userCode = input.user_code;
  deviceLoginHints.set(normalizeUserCode(userCode), input.login_hint ?? DEFAULT_LOGIN_HINT);
  const jar = new CookieJar();
  const page = `${server.base}/${tenant}/device`;
  // GET with the code answers an auto-submitting form carrying the session's xsrf token.
  const opened = await selfGet(server, `${page}?${new URLSearchParams({ user_code: userCode })}`, jar);
  let xsrf = xsrfOf(opened.body);
  if (!xsrf) throw new TestError(502, 'no xsrf on the verification page', { body: opened.body });
  const confirmPage = await selfGet(server, page, jar, { xsrf, user_code: userCode });
  xsrf = xsrfOf(confirmPage.body);
  if (!xsrf) throw new TestError(400, `the verification page refused the code (HTTP ${confirmPage.status})`, { body: confirmPage.body });
  const decision = abort ? { abort: 'yes' } : { confirm: 'yes' };
  let answer = await selfGet(server, page, jar, { xsrf, user_code: userCode, ...decision });
  let url = page;
  for (let hop = 0; hop < 10 && answer.status >= 300 && answer.status < 400 && answer.location; hop += 1) {
    url = new URL(answer.location, url).href;
    answer = await selfGet(server, url, jar);
  }
  return { status: answer.status, body: answer.body };
}

async function approveDeviceCode(server, input) {
  const outcome = await deviceUserFlow(server, input, { abort: false });
  if (outcome.status !== 200 || !outcome.body.includes('signed in')) {
    throw new TestError(502, `the device sign-in did not finish (HTTP ${outcome.status})`, outcome);
  }
  return { approved: true };
}

async function declineDeviceCode(server, input) {
  await deviceUserFlow(server, input, { abort: true });
  return { declined: true };
}

// Makes the code expired now (the credential's paused clock cannot move ours).
function expireDeviceCode(input) {
  const key = userCodeIndex.get(normalizeUserCode(input.user_code ?? ''));
  const entry = key ? store.get(key) : undefined;
  if (!entry) throw new TestError(404, 'user code not found', { expired: false });
  entry.payload.exp = Math.floor(Date.now() / 1000) - 1;
  entry.expiresAt = undefined; // still found, so the grant answers expired_token
  return { expired: true };
}

async function revokeRefreshToken(server, input) {
  const value = input.refresh_token;
  if (typeof value !== 'string' || !value) throw new TestError(400, 'refresh_token is required');
  const { provider } = server.tenantProvider('common');
  const token = await provider.RefreshToken.find(value, { ignoreExpiration: true });
  if (!token) throw new TestError(404, 'refresh token not found', { revoked: false });
  await token.destroy();
  return { revoked: true };
}

// ---------------------------------------------------------------------------------------------
// Protected resource: RS256 JWT bearer with aud https://resource.test
// ---------------------------------------------------------------------------------------------

function verifyAccessToken(authorization, publicKey) {
  const match = /^Bearer\s+(\S+)$/i.exec(authorization ?? '');
  if (!match) return { ok: false, reason: 'missing bearer token' };
  const parts = match[1].split('.');
  if (parts.length !== 3) return { ok: false, reason: 'not a JWT' };
  let header;
  let payload;
  try {
    header = JSON.parse(Buffer.from(parts[0], 'base64url').toString('utf8'));
    payload = JSON.parse(Buffer.from(parts[1], 'base64url').toString('utf8'));
  } catch {
    return { ok: false, reason: 'undecodable JWT' };
  }
  if (header.alg !== 'RS256') return { ok: false, reason: 'alg must be RS256' };
  const signed = crypto.verify('RSA-SHA256', Buffer.from(`${parts[0]}.${parts[1]}`),
    publicKey, Buffer.from(parts[2], 'base64url'));
  if (!signed) return { ok: false, reason: 'bad signature' };
  const now = Math.floor(Date.now() / 1000);
  if (typeof payload.exp !== 'number' || payload.exp <= now) return { ok: false, reason: 'expired' };
  if (typeof payload.nbf === 'number' && payload.nbf > now + 60) return { ok: false, reason: 'not yet valid' };
  const audiences = [].concat(payload.aud);
  if (!audiences.includes(PROTECTED_RESOURCE_AUDIENCE)) return { ok: false, reason: 'wrong audience' };
  return { ok: true, payload };
}

function bearerChallenge(server, extra) {
  return `Bearer realm="", authorization_uri="${server.base}/common/oauth2/authorize", ${extra}`;
}

async function handleResource(server, req, res, body) {
  resourceRequestCount += 1;
  let next = resourceQueue.shift();
  if (next?.kind === 'delay') {
    await sleep(Number(next.ms) || 0);
    next = undefined; // a delay entry only slows this request down
  }
  if (next?.kind === 'status') {
    const status = Number(next.status) || 503;
    const headers = next.retry_after !== undefined ? { 'retry-after': String(next.retry_after) } : {};
    sendJson(res, status, { error: 'programmed_status', status }, headers);
    return;
  }
  const verdict = verifyAccessToken(req.headers.authorization, server.signing.publicKey);
  if (!verdict.ok) {
    sendJson(res, 401, { error: 'invalid_token', reason: verdict.reason }, {
      'www-authenticate': bearerChallenge(server, 'error="invalid_token"'),
    });
    return;
  }
  if (next?.kind === 'cae') {
    const claims = { access_token: { nbf: { essential: true, value: String(Math.floor(Date.now() / 1000)) } } };
    const encoded = Buffer.from(JSON.stringify(claims)).toString('base64');
    sendJson(res, 401, { error: 'insufficient_claims' }, {
      'www-authenticate': bearerChallenge(server, `error="insufficient_claims", claims="${encoded}"`),
    });
    return;
  }
  sendJson(res, 200, {
    ok: true,
    sub: verdict.payload.sub,
    aud: verdict.payload.aud,
    method: req.method,
    body_len: body.length,
    body_sha256: crypto.createHash('sha256').update(body).digest('hex'),
  });
}

// ---------------------------------------------------------------------------------------------
// Test-only control endpoints
// ---------------------------------------------------------------------------------------------

function enqueueResourceAnswer(input) {
  const kinds = new Set(['cae', 'status', 'delay']);
  if (!kinds.has(input.kind)) throw new TestError(400, 'kind must be one of cae, status, delay');
  if (input.kind === 'status' && !(Number(input.status) >= 100 && Number(input.status) <= 599)) {
    throw new TestError(400, 'status must be an HTTP status code');
  }
  if (input.kind === 'delay' && !(Number(input.ms) >= 0)) throw new TestError(400, 'ms must be >= 0');
  resourceQueue.push(input);
  return { queued: resourceQueue.length };
}

// Clients registered by the tests with `private_key_jwt` (certificate credentials): kept in the
// shared store, where oidc-provider looks up any client that is not in its static list.
const certificateClients = new Set();

async function registerCertificateClient(input) {
  const { client_id: clientId, jwks } = input;
  if (typeof clientId !== 'string' || !clientId || CLIENTS.some((c) => c.client_id === clientId)) {
    throw new TestError(400, 'client_id must be a new, non-empty string');
  }
  if (!jwks || !Array.isArray(jwks.keys) || jwks.keys.length === 0) {
    throw new TestError(400, 'jwks must be {"keys":[…]} with at least one key');
  }
  await new SharedMemoryAdapter('Client').upsert(clientId, {
    client_id: clientId,
    token_endpoint_auth_method: 'private_key_jwt',
    jwks,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
  });
  certificateClients.add(clientId);
  return { registered: clientId };
}

async function handleTestEndpoint(server, req, res, pathname, body) {
  const route = `${req.method} ${pathname}`;
  try {
    switch (route) {
      case 'POST /_test/authorize':
        sendJson(res, 200, await testAuthorize(server, parseJsonBody(body)));
        return;
      case 'GET /_test/log':
        sendJson(res, 200, tokenLog);
        return;
      case 'POST /_test/log/clear':
        tokenLog.length = 0;
        sendJson(res, 200, { cleared: true });
        return;
      case 'POST /_test/device/approve':
        sendJson(res, 200, await approveDeviceCode(server, parseJsonBody(body)));
        return;
      case 'POST /_test/device/decline':
        sendJson(res, 200, await declineDeviceCode(server, parseJsonBody(body)));
        return;
      case 'POST /_test/device/expire':
        sendJson(res, 200, expireDeviceCode(parseJsonBody(body)));
        return;
      case 'POST /_test/device/slow_down': {
        const input = parseJsonBody(body);
        const count = Number(input.count ?? 1);
        if (!Number.isInteger(count) || count < 0) throw new TestError(400, 'count must be an integer >= 0');
        if (typeof input.tenant !== 'string' || !TENANT_RE.test(input.tenant)) throw new TestError(400, 'tenant is required');
        slowDownPolls.set(input.tenant, count);
        sendJson(res, 200, { slow_down: count });
        return;
      }
      case 'POST /_test/revoke_refresh_token':
        sendJson(res, 200, await revokeRefreshToken(server, parseJsonBody(body)));
        return;
      case 'POST /_test/resource/next':
        sendJson(res, 200, enqueueResourceAnswer(parseJsonBody(body)));
        return;
      case 'GET /_test/resource/count':
        sendJson(res, 200, { requests: resourceRequestCount });
        return;
      case 'POST /_test/clients':
        sendJson(res, 200, await registerCertificateClient(parseJsonBody(body)));
        return;
      case 'POST /_test/workload/token':
        sendJson(res, 200, await mintServiceAccountToken(server.cluster, parseJsonBody(body)));
        return;
      default:
        sendJson(res, 404, { error: `no test endpoint ${route}` });
    }
  } catch (err) {
    const status = err instanceof TestError ? err.status : 400;
    if (!(err instanceof TestError)) log(`test endpoint ${route} failed:`, err);
    sendJson(res, status, { error: err.message, ...(err.extra ?? {}) });
  }
}

// ---------------------------------------------------------------------------------------------
// Token endpoint front: log, answer replays Entra's way, then hand over to the Provider
// ---------------------------------------------------------------------------------------------

function logTokenRequest(tenant, req, form, endpoint = 'token') {
  const entry = {
    tenant,
    endpoint,
    grant_type: typeof form.grant_type === 'string' ? form.grant_type : null,
    form,
    basic_auth_client_id: basicAuthClientId(req.headers.authorization),
    // jti, iat, sub and SHA-256 of a client assertion (null without one).
    assertion: assertionSummary(form.client_assertion),
    headers: {
      'x-ms-client-request-id': req.headers['x-ms-client-request-id'] ?? null,
      'user-agent': req.headers['user-agent'] ?? null,
      'content-type': req.headers['content-type'] ?? null,
    },
  };
  tokenLog.push(entry);
}

// Requests the front answers itself, before the Provider sees them. Returns the problem (as
// oidc-provider would describe it) or undefined.
function frontRejection(form, tenant) {
  const error = (name, description, detail) => ({ error: name, description, detail });
  switch (form.grant_type) {
    // oidc-provider revokes the whole grant when a used code or a rotated-away refresh token
    // comes back. Entra only refuses that one request, so replays stop here.
    case 'authorization_code': {
      const code = SharedMemoryAdapter.peek('AuthorizationCode', form.code);
      if (code?.consumed) return error('invalid_grant', 'grant request is invalid', 'authorization code already redeemed');
      return undefined;
    }
    case 'refresh_token': {
      const rt = SharedMemoryAdapter.peek('RefreshToken', form.refresh_token);
      if (rt?.consumed) return error('invalid_grant', 'grant request is invalid', 'refresh token already used (rotated)');
      return undefined;
    }
    // Programmed by /_test/device/slow_down: the next polls are told to back off.
    case DEVICE_CODE_GRANT: {
      const left = slowDownPolls.get(tenant) ?? 0;
      if (left > 0) {
        slowDownPolls.set(tenant, left - 1);
        return error('slow_down', 'you are polling too quickly and should back off at a reasonable rate');
      }
      return undefined;
    }
    // Entra requires "<resource>/.default" here; oidc-provider would hand out an opaque token.
    case 'client_credentials': {
      if (typeof form.scope !== 'string' || !form.scope.trim()) {
        return error('invalid_request', "missing required parameter 'scope'");
      }
      if (!form.scope.split(' ').some((s) => s.endsWith('/.default') && resourceOfScope(s))) {
        return error('invalid_scope', 'client credential flows need a scope value with /.default suffixed to the resource identifier', `scope: ${form.scope}`);
      }
      return undefined;
    }
    default:
      return undefined;
  }
}

async function handleTokenRequest(server, tenantProvider, req, res, body) {
  const form = parseForm(body);
  logTokenRequest(tenantProvider.tenant, req, form);
  let problem = frontRejection(form, tenantProvider.tenant);
  // A certificate client's assertion is oidc-provider's to check (private_key_jwt: signature
  // against the registered JWKS, aud = the token endpoint URL, exp, a single-use jti).
  const federated = !certificateClients.has(form.client_id);
  if (!problem && form.client_assertion_type === JWT_BEARER && federated) {
    problem = await checkFederatedAssertion(server.cluster, form, log);
    if (!problem) {
      // Valid: oidc-provider issues the token as for any confidential client.
      const { client_assertion: _a, client_assertion_type: _t, ...rest } = form;
      req.body = Buffer.from(new URLSearchParams({ ...rest, client_secret: WORKLOAD_INTERNAL_SECRET }).toString());
    }
  }
  if (problem) {
    log(`${tenantProvider.tenant}: front rejected ${form.grant_type}: ${problem.detail ?? problem.description}`);
    const { status, body: errorBody, headers } = entraErrorBody({
      ...problem,
      grantType: form.grant_type,
      clientId: form.client_id ?? basicAuthClientId(req.headers.authorization),
      tenant: tenantProvider.tenant,
    }, req.headers, {});
    sendJson(res, status, errorBody, headers);
    return;
  }
  tenantProvider.handle(req, res);
}

// ---------------------------------------------------------------------------------------------
// Request routing
// ---------------------------------------------------------------------------------------------

async function route(server, req, res) {
  const url = new URL(req.url, server.base);
  const { pathname } = url;
  // oidc-provider reads an already-consumed body from req.body; the front needs it first for
  // the token log and the protected resource's hash.
  const body = await readBody(req);
  req.body = body;

  if (pathname.startsWith('/_test/')) {
    await handleTestEndpoint(server, req, res, pathname, body);
    return;
  }
  if (pathname.startsWith('/resource/')) {
    await handleResource(server, req, res, body);
    return;
  }

  const match = /^\/([^/]+)(\/.*)?$/.exec(pathname);
  if (!match || !TENANT_RE.test(match[1])) {
    sendJson(res, 404, { error: 'not_found', error_description: `no route for ${pathname}` });
    return;
  }
  const [, tenant, rest = '/'] = match;
  const tenantProvider = server.tenantProvider(tenant);
  const paths = endpointPaths(tenant);

  // What the Provider sees: the path without the tenant, the tenant as the mount path (so the
  // URLs it advertises carry it), and JSON as the accepted answer (errors would be HTML).
  req.baseUrl = `/${tenant}`;
  req.headers.accept = 'application/json';
  let innerPath = rest;
  let { search } = url;

  if (rest === '/v2.0/.well-known/openid-configuration') {
    innerPath = '/.well-known/openid-configuration';
  } else if (rest.startsWith('/_interaction/')) {
    await completeInteraction(tenantProvider, req, res);
    return;
  } else if (rest === paths.authorization && req.method === 'GET') {
    search = `?${rewriteAuthorizeQuery(search)}`;
  } else if (rest === paths.device_authorization && req.method === 'POST') {
    // Logged with the token requests; the scope gets what authorize requests get (below).
    const form = parseForm(body);
    logTokenRequest(tenant, req, form, 'devicecode');
    // Entra takes a CAE or claims-challenge `claims` here; oidc-provider would read it as an
    // OpenID claims request, so it is logged and dropped.
    const { claims: _claims, ...forProvider } = form;
    req.body = Buffer.from(rewriteAuthorizeQuery(new URLSearchParams(forProvider).toString()));
  } else if (rest === paths.token && req.method === 'POST') {
    req.url = `${innerPath}${search}`;
    await handleTokenRequest(server, tenantProvider, req, res, body);
    return;
  }
  req.url = `${innerPath}${search}`;
  tenantProvider.handle(req, res);
}

// ---------------------------------------------------------------------------------------------
// Start-up and shutdown
// ---------------------------------------------------------------------------------------------

function exitWith(code, why) {
  log(`exiting: ${why}`);
  process.exit(code);
}

function watchLifetime() {
  // The Rust harness holds our stdin: when it goes away, so do we.
  process.stdin.on('end', () => exitWith(0, 'stdin closed'));
  process.stdin.on('close', () => exitWith(0, 'stdin closed'));
  process.stdin.on('error', () => exitWith(0, 'stdin error'));
  process.stdin.resume();
  process.on('SIGTERM', () => exitWith(0, 'SIGTERM'));
  process.on('SIGINT', () => exitWith(0, 'SIGINT'));
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  watchLifetime();
  // The three slow start-up steps run side by side.
  const [pki, signing, providerModule] = await Promise.all([
    makePki(opts.dir), makeSigningKey(), import('oidc-provider'),
  ]);
  Provider = providerModule.default;
  const cookieKey = crypto.randomBytes(32).toString('base64url');
  // Advertised host: one the certificate covers.
  const selfHost = ['127.0.0.1', 'localhost'].includes(opts.host) ? opts.host : '127.0.0.1';

  const server = {
    pki, signing, selfHost, port: undefined, base: undefined, providers: new Map(),
    tenantProvider(tenant) {
      if (!this.providers.has(tenant)) {
        this.providers.set(tenant, createTenantProvider(tenant, {
          base: this.base, signingJwk: signing.jwk, cookieKey, rotateRefreshTokens: opts.rotateRefreshTokens,
        }));
      }
      return this.providers.get(tenant);
    },
  };

  const httpsServer = https.createServer({ cert: pki.cert, key: pki.key }, (req, res) => {
    route(server, req, res).catch((err) => {
      log(`request ${req.method} ${req.url} failed:`, err);
      // oidc-provider's errors (e.g. an expired interaction) carry their own 4xx status.
      const status = err.statusCode >= 400 && err.statusCode < 500 ? err.statusCode : 500;
      if (!res.headersSent) sendJson(res, status, { error: err.error ?? 'server_error', error_description: String(err.error_description ?? err.message) });
      else res.destroy();
    });
  });
  httpsServer.on('tlsClientError', (err) => log('TLS client error:', err.message));
  // Outlive hyper's 90 s pool idle timeout so a client never reuses a connection we are closing.
  httpsServer.keepAliveTimeout = 120_000;
  httpsServer.headersTimeout = 125_000;

  await new Promise((resolve, reject) => {
    httpsServer.once('error', reject);
    httpsServer.listen(opts.port, opts.host, resolve);
  });
  server.port = httpsServer.address().port;
  server.base = `https://${selfHost}:${server.port}`;
  server.cluster = await startClusterIssuer({ host: opts.host, selfHost, pki, log });
  log(`listening on ${opts.host}:${server.port}, refresh token rotation ${opts.rotateRefreshTokens ? 'on' : 'off'}`);

  process.stdout.write(`${JSON.stringify({
    ready: true, port: server.port, base: server.base, ca: pki.caPath, cluster_issuer: server.cluster.issuer,
  })}\n`);
}

main().catch((err) => {
  log('start-up failed:', err);
  process.exit(1);
});
