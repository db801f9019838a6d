#!/usr/bin/env python3
"""Python peer for the tower-identity cache-interop tests.

Drives the real `msal`, `msal-extensions` and `azure-identity` packages against the oidc peer
(tests/peers/oidc) so the Rust tests can check that the MSAL token-cache file interoperates.

Every subcommand prints exactly one JSON object on stdout and logs to stderr. Success: exit 0.
Failure: exit 1 (2 for bad arguments) with {"error": "...", "type": "<exception class>", ...}.
Run `peer.py <subcommand> --help` for the options; README.md has examples.
"""

import argparse
import base64
import json
import logging
import os
import random
import sys
import time
import urllib.parse
import warnings

LOG = logging.getLogger("peer")

FOCI_CLIENT_ID = "04b07795-8ddb-461a-bbee-02f9e1bf7b46"  # Azure CLI, a FOCI member
DEFAULT_REDIRECT_URI = "http://localhost:8400/callback"

# The real stdout, kept for the single JSON answer. sys.stdout itself is pointed at stderr in
# main() so that nothing a library prints can corrupt the answer.
_ANSWER_STREAM = sys.stdout


# ----------------------------------------------------------------------------------------------
# Errors and output
# ----------------------------------------------------------------------------------------------

class PeerError(Exception):
    """A failure with a JSON-able description; `extra` fields go into the error object."""

    def __init__(self, message, type_name=None, **extra):
        super().__init__(message)
        self.type_name = type_name or type(self).__name__
        self.extra = extra


def msal_failure(result, what):
    """Turns msal's error dict (msal reports failures as dicts, not exceptions) into a PeerError."""
    return PeerError(
        "{} failed: {}: {}".format(what, result.get("error"), result.get("error_description")),
        "MsalError",
        msal_error=result.get("error"),
        error_description=result.get("error_description"),
        error_codes=result.get("error_codes"),
        suberror=result.get("suberror"),
    )


def answer(obj, exit_code=0):
    _ANSWER_STREAM.write(json.dumps(obj) + "\n")
    _ANSWER_STREAM.flush()
    sys.exit(exit_code)


class JsonArgumentParser(argparse.ArgumentParser):
    """argparse that reports bad arguments in the same JSON shape as every other failure."""

    def error(self, message):
        self.print_usage(sys.stderr)
        answer({"error": "{}: {}".format(self.prog, message), "type": "UsageError"}, 2)


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------

def pin_ca(ca_path):
    """Makes every HTTPS client in this process trust exactly the oidc peer's CA.

    This machine (and CI) export SSL_CERT_FILE and REQUESTS_CA_BUNDLE globally. `requests`
    lets REQUESTS_CA_BUNDLE override a *session-level* `verify` (msal sets
    `session.verify = verify`, azure-core's default is `verify=True`), so passing the CA as an
    option is not enough: the environment is overwritten here as well, for this process only.
    """
    ca_path = os.path.abspath(ca_path)
    if not os.path.isfile(ca_path):
        raise PeerError("CA file not found: {}".format(ca_path), "FileNotFoundError")
    os.environ["REQUESTS_CA_BUNDLE"] = ca_path
    os.environ["SSL_CERT_FILE"] = ca_path
    os.environ.pop("CURL_CA_BUNDLE", None)  # requests also reads this one
    return ca_path


def jwt_claims(token):
    """The payload of a JWT, decoded WITHOUT verifying anything (we only read `aud`)."""
    try:
        payload = token.split(".")[1]
        payload += "=" * (-len(payload) % 4)
        return json.loads(base64.urlsafe_b64decode(payload))
    except (IndexError, ValueError):
        return {}  # opaque token: no claims


def jwt_aud(token):
    return jwt_claims(token).get("aud")


def split_scopes(text):
    scopes = text.split()
    if not scopes:
        raise PeerError("--scopes is empty", "UsageError")
    return scopes


def authority_url(base, tenant):
    return "{}/{}".format(base.rstrip("/"), tenant)


def read_text_or_none(path):
    try:
        with open(path, "r", encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def load_serializable_cache(path):
    """A msal.SerializableTokenCache holding FILE's document (empty when FILE does not exist)."""
    import msal

    cache = msal.SerializableTokenCache()
    text = read_text_or_none(path)
    if text is not None and text.strip():
        cache.deserialize(text)
    return cache


def save_cache_text(path, text):
    """Writes the cache document the way msal-extensions' FilePersistence does.

    Under msal-extensions' lock file (`FILE.lockfile`), the file is opened with
    O_RDWR|O_CREAT|O_TRUNC, mode 0600 when created, and rewritten in place. Using the library's
    own lock and persistence means a concurrent msal-extensions/azure-identity/Rust writer that
    follows the same protocol never sees a half-written file.
    """
    import msal_extensions

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with msal_extensions.CrossPlatLock(path + ".lockfile"):
        msal_extensions.FilePersistence(path).save(text)


def save_cache_if_changed(path, cache):
    if cache.has_state_changed:
        save_cache_text(path, cache.serialize())
        return True
    return False


def public_client(args, cache):
    import msal

    return msal.PublicClientApplication(
        args.client_id,
        authority=authority_url(args.authority_base, args.tenant),
        token_cache=cache,
        verify=args.ca,
        # The oidc peer is not a known Entra host: no instance discovery, no validation.
        instance_discovery=False,
        validate_authority=False,
    )


def http_post_json(url, body, ca):
    import requests

    response = requests.post(url, json=body, verify=ca, timeout=30)
    try:
        data = response.json()
    except ValueError:
        data = {"error": response.text[:500]}
    if response.status_code != 200:
        raise PeerError("POST {} -> HTTP {}: {}".format(url, response.status_code, data.get("error")),
                        "PeerHttpError", status=response.status_code, body=data)
    return data


# ----------------------------------------------------------------------------------------------
# msal subcommands
# ----------------------------------------------------------------------------------------------

def obtain_code_for_flow(args, flow):
    """Plays the user: returns the query of the final redirect (code, state, ...) for msal.

    The oidc peer's test endpoint runs authorize -> login -> consent for us. The parameters
    come from msal's own authorization URL, so PKCE challenge, state and nonce are exactly what
    msal checks when the code is redeemed.
    """
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(flow["auth_uri"]).query))
    body = {
        "tenant": args.tenant,
        "client_id": args.client_id,
        "redirect_uri": query["redirect_uri"],
        "scope": query["scope"],
        "login_hint": args.username,
    }
    for field in ("code_challenge", "code_challenge_method", "state", "nonce"):
        if field in query:
            body[field] = query[field]
    LOG.debug("test authorize request: %s", body)
    try:
        reply = http_post_json(args.authority_base.rstrip("/") + "/_test/authorize", body, args.ca)
    except PeerError as err:
        if not is_self_redirect_failure(err, args.authority_base):
            raise
        # With the server on 443 the test endpoint mistakes its own redirects (browsers and
        # URL parsers drop ":443") for the final one. Walk the same chain ourselves.
        LOG.warning("/_test/authorize stopped at its own host (%s); following the redirects here",
                    err.extra["body"].get("redirect"))
        return follow_authorize_redirects(flow["auth_uri"], query["redirect_uri"], args.ca)
    return redirect_query_with_code(reply["redirect"], reply["code"])


def redirect_query_with_code(redirect, code):
    """The redirect's query as a browser would deliver it to msal (code, state, ...)."""
    params = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(redirect).query))
    params.setdefault("code", code)
    return params


def is_self_redirect_failure(err, base):
    redirect = (err.extra.get("body") or {}).get("redirect") if err.extra else None
    if err.extra.get("status") != 502 or not redirect:
        return False
    return urllib.parse.urlsplit(redirect).hostname == urllib.parse.urlsplit(base).hostname


def follow_authorize_redirects(auth_uri, redirect_uri, ca, max_hops=10):
    """GETs msal's authorization URL and follows redirects with a cookie jar, as a browser
    would, until the redirect to `redirect_uri`; the server's interaction pages log the
    login_hint user in and consent without a person."""
    import requests

    final = urllib.parse.urlsplit(redirect_uri)[:3]
    session = requests.Session()
    url = auth_uri
    for _ in range(max_hops):
        response = session.get(url, allow_redirects=False, verify=ca, timeout=30)
        location = response.headers.get("Location")
        if not response.is_redirect or not location:
            raise PeerError("authorize chain stopped with HTTP {} at {}".format(response.status_code, url),
                            "PeerHttpError", status=response.status_code, body=response.text[:500])
        url = urllib.parse.urljoin(url, location)
        if urllib.parse.urlsplit(url)[:3] == final:
            params = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
            if "error" in params:
                raise PeerError("authorization failed: {}".format(params), "AuthorizationError")
            return params
    raise PeerError("too many redirects in the authorize chain", "PeerHttpError")


def cmd_msal_signin(args):
    cache = load_serializable_cache(args.cache)
    app = public_client(args, cache)
    flow = app.initiate_auth_code_flow(
        split_scopes(args.scopes), redirect_uri=args.redirect_uri, login_hint=args.username)
    if "error" in flow:
        raise msal_failure(flow, "initiate_auth_code_flow")
    auth_response = obtain_code_for_flow(args, flow)
    result = app.acquire_token_by_auth_code_flow(flow, auth_response)
    if "error" in result:
        raise msal_failure(result, "acquire_token_by_auth_code_flow")
    save_cache_text(args.cache, cache.serialize())
    account = pick_account(app, args.username)
    return {
        "ok": True,
        "home_account_id": account["home_account_id"],
        "username": account["username"],
        "cache": os.path.abspath(args.cache),
        "access_token_aud": jwt_aud(result["access_token"]),
    }


def pick_account(app, username):
    """The account to use: the one with `username`, else the only one; several -> error."""
    accounts = app.get_accounts(username=username)
    if not accounts:
        raise PeerError("no account{} in the cache".format(
            " for username {}".format(username) if username else ""), "NoAccount")
    if len(accounts) > 1:
        raise PeerError("several accounts in the cache, pass --username", "MultipleAccounts",
                        usernames=[a["username"] for a in accounts])
    return accounts[0]


def cmd_msal_silent(args):
    if read_text_or_none(args.cache) is None:
        raise PeerError("cache file not found: {}".format(args.cache), "FileNotFoundError")
    cache = load_serializable_cache(args.cache)
    app = public_client(args, cache)
    account = pick_account(app, args.username)
    # The *_with_error variant says why, where acquire_token_silent would only return None.
    result = app.acquire_token_silent_with_error(
        split_scopes(args.scopes), account, force_refresh=args.force_refresh)
    if result is None:
        raise PeerError("no usable access or refresh token in the cache", "NoTokenInCache")
    if "error" in result:
        raise msal_failure(result, "acquire_token_silent")
    written = save_cache_if_changed(args.cache, cache)
    return {
        "ok": True,
        "source": result.get("token_source"),
        "access_token_aud": jwt_aud(result["access_token"]),
        "home_account_id": account["home_account_id"],
        "cache_written": written,
    }


def acquire_app_only(args, cache):
    """acquire_token_for_client through msal with `cache`; the answer's common fields."""
    import msal

    app = msal.ConfidentialClientApplication(
        args.client_id,
        client_credential=args.client_secret,
        authority=authority_url(args.authority_base, args.tenant),
        token_cache=cache,
        verify=args.ca,
        instance_discovery=False,
        validate_authority=False,
    )
    result = app.acquire_token_for_client(split_scopes(args.scopes))
    if "error" in result:
        raise msal_failure(result, "acquire_token_for_client")
    return {
        "ok": True,
        "source": result.get("token_source"),
        "access_token_aud": jwt_aud(result["access_token"]),
    }


def cmd_msal_app_only(args):
    cache = load_serializable_cache(args.cache)
    answer = acquire_app_only(args, cache)
    answer["cache"] = os.path.abspath(args.cache)
    answer["cache_written"] = save_cache_if_changed(args.cache, cache)
    return answer


def cmd_azid_persistent_app_only(args):
    """Client credentials through msal with azure-identity's own persistent cache for this
    platform (on Linux: msal-extensions' LibsecretPersistence in the Secret Service, signal file
    ~/.IdentityService/<name>.nocae), unencrypted storage not allowed. Runs under the HOME and
    DBUS_SESSION_BUS_ADDRESS the caller sets."""
    from azure.identity import TokenCachePersistenceOptions
    from azure.identity._persistent_cache import _load_persistent_cache

    cache = _load_persistent_cache(TokenCachePersistenceOptions(name=args.name), is_cae=False)
    answer = acquire_app_only(args, cache)
    answer["encrypted"] = cache.is_encrypted
    answer["persistence"] = type(cache._persistence).__name__  # pylint: disable=protected-access
    return answer


def cmd_msal_accounts(args):
    if read_text_or_none(args.cache) is None:
        raise PeerError("cache file not found: {}".format(args.cache), "FileNotFoundError")
    app = public_client(args, load_serializable_cache(args.cache))
    # msal groups Account entries by home_account_id (one per person, whatever the tenant) and
    # keeps only those whose environment is the authority's host (without port) or an alias.
    accounts = [
        {key: a.get(key) for key in ("home_account_id", "username", "environment", "realm")}
        for a in app.get_accounts()
    ]
    return {"accounts": accounts}


# ----------------------------------------------------------------------------------------------
# azure-identity subcommands
# ----------------------------------------------------------------------------------------------

def get_token_or_raise(credential, scopes, **kwargs):
    """Runs get_token; exceptions propagate and main() reports their class name
    (CredentialUnavailableError vs ClientAuthenticationError is what callers check)."""
    token = credential.get_token(*scopes, **kwargs)
    return {
        "ok": True,
        "expires_on": token.expires_on,
        "access_token_aud": jwt_aud(token.token),
    }


def default_shared_cache_authority(base):
    """host[:port] of the oidc peer, as a user would configure it.

    azure-identity compares Account.environment (msal writes the host without port) with this
    authority's netloc *including* any port, so only an authority without a port (the server
    on 443) finds msal's accounts. "https://127.0.0.1:443" is therefore reduced to "127.0.0.1";
    any other port is kept (and then no account matches, which is what a caller may want to see).
    """
    parts = urllib.parse.urlsplit(base)
    return parts.hostname if parts.port in (None, 443) else "{}:{}".format(parts.hostname, parts.port)


def cmd_azid_shared_cache(args):
    # azure-identity finds the cache through os.path.expanduser("~/.IdentityService/..."),
    # which reads HOME at call time; set it before anything touches the cache.
    os.environ["HOME"] = os.path.abspath(args.home)
    from azure.identity import SharedTokenCacheCredential

    authority = args.authority or default_shared_cache_authority(args.authority_base)
    credential = SharedTokenCacheCredential(
        username=args.username,
        tenant_id=args.tenant_id,
        authority=authority,
        connection_verify=args.ca,  # per-request verify: beats REQUESTS_CA_BUNDLE in requests
    )
    LOG.debug("SharedTokenCacheCredential authority=%s home=%s", authority, args.home)
    result = get_token_or_raise(credential, split_scopes(args.scopes))
    result["authority"] = authority
    return result


def cmd_azid_client_secret(args):
    from azure.identity import ClientSecretCredential

    credential = ClientSecretCredential(
        args.tenant, args.client_id, args.client_secret,
        authority=args.authority_base,
        connection_verify=args.ca,
        # Otherwise msal asks login.microsoftonline.com whether this authority is known.
        disable_instance_discovery=True,
    )
    return get_token_or_raise(credential, split_scopes(args.scope))


def cmd_azid_certificate(args):
    from azure.identity import CertificateCredential

    kwargs = {}
    if args.password is not None:
        kwargs["password"] = args.password
    credential = CertificateCredential(
        args.tenant, args.client_id, args.certificate,
        authority=args.authority_base,
        connection_verify=args.ca,
        send_certificate_chain=args.send_chain,
        # Otherwise msal asks login.microsoftonline.com whether this authority is known.
        disable_instance_discovery=True,
        **kwargs,
    )
    return get_token_or_raise(credential, split_scopes(args.scope))


def cmd_azid_workload_identity(args):
    from azure.identity import WorkloadIdentityCredential

    # ClientAssertionCredential's AadClient, not msal: no instance discovery to turn off.
    credential = WorkloadIdentityCredential(
        tenant_id=args.tenant,
        client_id=args.client_id,
        token_file_path=args.token_file,
        authority=args.authority_base,
        connection_verify=args.ca,
    )
    return get_token_or_raise(credential, split_scopes(args.scope))

# Variables that select or redirect a managed-identity source (production-credentials.md §1).
# mi-token reports which of them it saw, so a test can tell a wrong environment from a wrong
# request.
MI_ENV_VARS = (
    "IDENTITY_ENDPOINT", "IDENTITY_HEADER", "IDENTITY_SERVER_THUMBPRINT", "IMDS_ENDPOINT",
    "MSI_ENDPOINT", "MSI_SECRET", "AZURE_POD_IDENTITY_AUTHORITY_HOST",
)


def cmd_mi_token(args):
    """azure-identity's ManagedIdentityCredential, configured only by the environment the
    caller passes (the Rust test points it at a loopback emulator)."""
    from azure.identity import ManagedIdentityCredential

    kwargs = {}
    if args.client_id:
        kwargs["client_id"] = args.client_id
    elif args.object_id:
        kwargs["identity_config"] = {"object_id": args.object_id}
    elif args.resource_id:
        kwargs["identity_config"] = {"resource_id": args.resource_id}
    credential = ManagedIdentityCredential(**kwargs)
    # The source azure-identity picked, e.g. "ImdsCredential" (None: no source found).
    inner = getattr(credential, "_credential", None)
    try:
        token = credential.get_token(args.scope)
    except Exception as err:
        raise PeerError(str(err) or repr(err), type(err).__name__,
                        source=type(inner).__name__ if inner else None) from err
    return {
        "ok": True,
        "expires_on": token.expires_on,
        "access_token": token.token,
        "source": type(inner).__name__ if inner else None,
        "env": sorted(name for name in MI_ENV_VARS if os.environ.get(name)),
    }


# ----------------------------------------------------------------------------------------------
# msal-extensions concurrency peer
# ----------------------------------------------------------------------------------------------

def marker_access_token(client_id, scope):
    now = int(time.time())
    return {
        "credential_type": "AccessToken",
        "secret": "x",
        "home_account_id": None,
        "environment": "login.microsoftonline.com",
        "client_id": client_id,
        "target": scope,
        "realm": "contoso",
        "token_type": "Bearer",
        "cached_at": str(now),
        "expires_on": str(now + 3600),
        "extended_expires_on": str(now + 3600),
    }


def append_entry_locked(path, key, entry):
    """One read-modify-write of the JSON document under msal-extensions' lock file.

    Returns the seconds spent waiting for the lock. A document that is not valid JSON is an
    error, never overwritten: losing another writer's data is exactly what the test looks for.
    """
    import msal_extensions

    started = time.monotonic()
    with msal_extensions.CrossPlatLock(path + ".lockfile"):
        waited = time.monotonic() - started
        text = read_text_or_none(path)
        document = json.loads(text) if text and text.strip() else {}
        if not isinstance(document, dict):
            raise PeerError("cache document is not a JSON object", "CorruptCache")
        document.setdefault("AccessToken", {})[key] = entry
        msal_extensions.FilePersistence(path).save(json.dumps(document, indent=4))
    return waited


def cmd_msal_ext_writer(args):
    written = []
    max_wait = 0.0
    deadline = time.monotonic() + args.seconds if args.seconds is not None else None
    try:
        while (deadline is None or time.monotonic() < deadline) and (
            args.count is None or len(written) < args.count
        ):
            key = "{}-{}".format(args.prefix, len(written))
            waited = append_entry_locked(args.cache, key, marker_access_token(args.client_id, args.scope))
            written.append(key)
            max_wait = max(max_wait, waited)
            # Jittered pause outside the lock so the other writers get their turns.
            time.sleep(random.uniform(0.01, 0.03))
    except Exception as err:  # report what made it to disk before the failure
        raise PeerError(str(err), type(err).__name__, written=written) from err
    return {"ok": True, "written": written, "max_lock_wait_ms": round(max_wait * 1000, 1)}


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------

def build_parser():
    parser = JsonArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logs (msal too) on stderr")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=JsonArgumentParser)

    def command(name, handler, help_text, network=True):
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        sub.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS)
        if network:
            sub.add_argument("--authority-base", required=True, metavar="https://127.0.0.1:PORT",
                             help="oidc peer base URL (its ready line's `base`)")
            sub.add_argument("--ca", required=True, metavar="PATH", help="oidc peer ca.pem")
        return sub

    sub = command("msal-signin", cmd_msal_signin, "authorization-code sign-in with msal, no person needed")
    sub.add_argument("--tenant", required=True)
    sub.add_argument("--client-id", required=True)
    sub.add_argument("--username", required=True, help="login hint, becomes the signed-in user")
    sub.add_argument("--scopes", required=True, help='space-separated, e.g. "https://resource.test/.default"')
    sub.add_argument("--cache", required=True, metavar="FILE")
    sub.add_argument("--redirect-uri", default=DEFAULT_REDIRECT_URI)

    sub = command("msal-silent", cmd_msal_silent, "acquire_token_silent from a cache file")
    sub.add_argument("--tenant", required=True)
    sub.add_argument("--client-id", required=True)
    sub.add_argument("--cache", required=True, metavar="FILE")
    sub.add_argument("--scopes", required=True)
    sub.add_argument("--username")
    sub.add_argument("--force-refresh", action="store_true")

    sub = command("msal-app-only", cmd_msal_app_only, "client credentials with msal ConfidentialClientApplication")
    sub.add_argument("--tenant", required=True)
    sub.add_argument("--client-id", required=True)
    sub.add_argument("--client-secret", required=True)
    sub.add_argument("--scopes", required=True)
    sub.add_argument("--cache", required=True, metavar="FILE")

    sub = command("azid-persistent-app-only", cmd_azid_persistent_app_only,
                  "client credentials with msal and azure-identity's persistent cache "
                  "(Secret Service on Linux; run by .venv-libsecret)")
    sub.add_argument("--tenant", required=True)
    sub.add_argument("--client-id", required=True)
    sub.add_argument("--client-secret", required=True)
    sub.add_argument("--scopes", required=True)
    sub.add_argument("--name", required=True, help="TokenCachePersistenceOptions(name=…)")

    sub = command("msal-accounts", cmd_msal_accounts, "accounts msal sees in a cache file")
    sub.add_argument("--cache", required=True, metavar="FILE")
    sub.add_argument("--tenant", default="organizations", help="authority tenant (default organizations)")
    sub.add_argument("--client-id", default=FOCI_CLIENT_ID, help="does not filter accounts")

    sub = command("azid-shared-cache", cmd_azid_shared_cache,
                  "azure-identity SharedTokenCacheCredential over DIR/.IdentityService/msal.cache.nocae")
    sub.add_argument("--home", required=True, metavar="DIR", help="used as HOME")
    sub.add_argument("--username")
    sub.add_argument("--tenant-id")
    sub.add_argument("--scopes", required=True)
    sub.add_argument("--authority", metavar="HOST:PORT",
                     help="credential authority (default: host:port of --authority-base)")

    sub = command("azid-client-secret", cmd_azid_client_secret, "azure-identity ClientSecretCredential")
    sub.add_argument("--tenant", required=True)
    sub.add_argument("--client-id", required=True)
    sub.add_argument("--client-secret", required=True)
    sub.add_argument("--scope", required=True, help="space-separated scopes")

    sub = command("azid-certificate", cmd_azid_certificate,
                  "azure-identity CertificateCredential (sync, through msal)")
    sub.add_argument("--tenant", required=True)
    sub.add_argument("--client-id", required=True)
    sub.add_argument("--certificate", required=True, metavar="FILE", help="PEM or PKCS#12")
    sub.add_argument("--password")
    sub.add_argument("--send-chain", action="store_true")
    sub.add_argument("--scope", required=True, help="space-separated scopes")

    sub = command("azid-workload-identity", cmd_azid_workload_identity,
                  "azure-identity WorkloadIdentityCredential with a token file")
    sub.add_argument("--tenant", required=True)
    sub.add_argument("--client-id", required=True)
    sub.add_argument("--token-file", required=True, metavar="FILE")
    sub.add_argument("--scope", required=True, help="space-separated scopes")

    sub = command("mi-token", cmd_mi_token,
                  "azure-identity ManagedIdentityCredential.get_token, source chosen by the environment",
                  network=False)
    sub.add_argument("--scope", required=True, help="exactly one scope, e.g. https://resource.test/.default")
    identity = sub.add_mutually_exclusive_group()
    identity.add_argument("--client-id", help="user-assigned: client_id=")
    identity.add_argument("--object-id", help='user-assigned: identity_config={"object_id": …}')
    identity.add_argument("--resource-id", help='user-assigned: identity_config={"resource_id": …}')

    sub = command("msal-ext-writer", cmd_msal_ext_writer,
                  "concurrency peer: add AccessToken entries under msal-extensions' lock, "
                  "for N seconds or N entries (whichever limit is given comes first)",
                  network=False)
    sub.add_argument("--cache", required=True, metavar="FILE")
    sub.add_argument("--seconds", type=float, help="stop after this long")
    sub.add_argument("--count", type=int, help="stop after this many entries")
    sub.add_argument("--prefix", required=True, help="entry keys are PREFIX-<counter>")
    sub.add_argument("--client-id", default="11111111-1111-1111-1111-111111111111")
    sub.add_argument("--scope", default="https://resource.test/.default", help="entries' target")
    # --authority-base/--ca are accepted (the harness passes them everywhere) and unused.
    sub.add_argument("--authority-base", help=argparse.SUPPRESS)
    sub.add_argument("--ca", help=argparse.SUPPRESS)
    return parser


def main(argv=None):
    # Libraries must not write to our stdout: it carries exactly one JSON object.
    sys.stdout = sys.stderr
    # msal warns on every auth-code flow that form_post is recommended; the oidc peer's test
    # endpoint returns the code in a query redirect, which is what we use. Not worth a log line.
    warnings.filterwarnings("ignore", message=".*response_mode='form_post' is recommended.*")
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.WARNING,
        format="peer.py %(levelname)s %(name)s: %(message)s",
    )
    try:
        if getattr(args, "ca", None) and args.handler is not cmd_msal_ext_writer:
            args.ca = pin_ca(args.ca)
        answer(args.handler(args))
    except PeerError as err:
        LOG.debug("failed", exc_info=True)
        answer(dict({"error": str(err), "type": err.type_name}, **err.extra), 1)
    except Exception as err:  # pylint: disable=broad-except
        LOG.debug("failed", exc_info=True)
        answer({"error": str(err) or repr(err), "type": type(err).__name__}, 1)


if __name__ == "__main__":
    main()
