//! [`SharedTokenCacheCredential`]: the accounts of the shared MSAL token cache.

use std::fmt;
use std::sync::{Arc, Mutex};

use super::env::Vars;
use super::refresh_tokens::{Cached, Candidate, Redeem, Refusals, or_aging, usable_access_token};
use super::settings::{Settings, settings_setters};
use super::{Plan, arc_credential_service};
use crate::cache::TokenCache;
use crate::entra::authority::{TenantPolicy, host_aliases, validate_tenant_id};
use crate::entra::msal_cache::{AccessTokenQuery, Account, CacheDocument, RefreshTokenQuery};
use crate::entra::store::TokenStore;
use crate::entra::token_client::{TokenClient, carries_a_challenge};
use crate::error::{ConfigError, CredentialError};
use crate::redact::{sanitize_quoted, truncate};
use crate::token::{AccessToken, TokenRequest};

pub(crate) const NAME: &str = "SharedTokenCacheCredential";
/// Azure CLI's public client: family refresh tokens are redeemed as it.
pub(crate) const AZURE_CLI_CLIENT_ID: &str = "04b07795-8ddb-461a-bbee-02f9e1bf7b46";
/// The tenant family refresh tokens are redeemed at when none is named.
const ORGANIZATIONS: &str = "organizations";
const UNAVAILABLE: &str = "authentication unavailable.";

/// Gets tokens for an account in the shared MSAL token cache
/// (`~/.IdentityService/msal.cache.nocae`), written by Visual Studio and by applications that
/// keep MSAL's persistent cache (azure-identity's or this crate's
/// [`TokenCachePersistenceOptions`](crate::TokenCachePersistenceOptions)). Azure CLI 2.30 and
/// later keeps its own cache (`~/.azure/msal_token_cache.json`): its `az login` is
/// [`AzureCliCredential`](crate::AzureCliCredential)'s.
///
/// ```no_run
/// use tower_identity::{CredentialExt, SharedTokenCacheCredential};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let credential = SharedTokenCacheCredential::builder()
///     .username("alice@contoso.com") // only needed when several accounts are cached
///     .build()?;
/// let token = credential.get_token(["https://management.azure.com/.default"]).await?;
/// # let _ = token; Ok(()) }
/// ```
///
/// Account selection, as the reference does it: `Account` entries whose `environment` is an
/// alias of the authority host and that have a *family* refresh token (FOCI) with the same
/// `home_account_id`, filtered by `username` (case-insensitive, in full Unicode: sign-in names
/// are, and msal compares them lower-cased; the reference compares exactly) and `tenant_id`
/// (the part of the `home_account_id` after the dot), de-duplicated by `home_account_id`.
/// Exactly one must remain; otherwise the credential is *unavailable* and says why, listing
/// the usernames of the accounts that remain, or of all the accounts when none does (at most
/// 10 named, each cut to 256 characters).
///
/// Then: a cached access token of that account (any application wrote it) whose scopes cover
/// the request, for the requested or else the configured tenant if either is named (the
/// reference takes any tenant's), and that has more than 300 s left (past its refresh time,
/// only if redeeming a refresh token fails, as in msal); else the account's family refresh tokens,
/// redeemed in turn (the next after a refusal; an outage or a transport failure is returned at
/// once) as Azure CLI's public client at the requested tenant (unless
/// [`disable_multitenant_auth`](SharedTokenCacheCredentialBuilder::disable_multitenant_auth)),
/// else the configured one, else `organizations`. New tokens, the rotated refresh token
/// included, are written back to the file under its lock; while only the legacy
/// `msal.cache` exists they are not written (that file is never written, and this credential,
/// which reads another tool's sign-in, does not create `msal.cache.nocae` from it). Every "cannot" is *unavailable*, so a chain moves on; a provider's refusal is
/// *authentication failed* (inside [`DefaultAzureCredential`](crate::DefaultAzureCredential)
/// every failure is *unavailable*, as in azure-identity, so Azure CLI gets its turn, until the
/// chain has chosen this credential).
///
/// The account is selected again at every acquisition (a scope's first request, a renewal).
/// When the selection changes (the developer signed in as someone else), the tokens kept in
/// memory for the previous account are dropped; until an acquisition sees the change, a scope
/// cached before is still served as the previous account (azure-identity reads the file on
/// every request and switches at once). Build a new credential to switch at once. When an
/// acquisition selects no account (the developer signed out, as msal's `remove_account` does;
/// none matches the settings any more; the file is gone), it fails, and the tokens kept in
/// memory from that file are dropped too: a scope cached before then fails as well, once an
/// acquisition has seen the sign-out.
#[derive(Clone)]
pub struct SharedTokenCacheCredential {
    inner: Arc<Inner>,
}

struct Inner {
    username: Option<String>,
    tenant_id: Option<String>,
    /// Where tokens are redeemed: the configured tenant, else `organizations`; a requested
    /// tenant instead, unless multitenant authentication is disabled.
    tenants: TenantPolicy,
    client: TokenClient,
    environments: Vec<String>,
    plain: TokenStore,
    cae: TokenStore,
    memory: TokenCache,
    /// The `home_account_id` the last acquisition selected, per document (ordinary, CAE):
    /// the account whose tokens the in-memory cache holds.
    selected: Mutex<[Option<String>; 2]>,
    /// The file's refresh tokens Entra refused lately, by request (see [`Refusals`]).
    refusals: Refusals,
}

impl SharedTokenCacheCredential {
    /// A builder: username, tenant, authority, cache options, HTTP client.
    pub fn builder() -> SharedTokenCacheCredentialBuilder {
        SharedTokenCacheCredentialBuilder::default()
    }

    /// Whether this platform has a shared token cache this crate can use: the plaintext file
    /// works wherever a home directory is known.
    pub fn supported() -> bool {
        crate::TokenCachePersistenceOptions::new()
            .allow_unencrypted_storage(true)
            .resolve(NAME)
            .is_ok()
    }
}

impl Inner {
    async fn get_token(
        self: &Arc<Self>,
        request: TokenRequest,
    ) -> Result<AccessToken, CredentialError> {
        // A requested tenant goes into the URL (validated) unless multitenant authentication
        // is disabled; else the configured one, else `organizations`, where family refresh
        // tokens are redeemed.
        let plan = Plan::new(NAME, &request, |requested| {
            self.tenants.resolve_required(requested).map(str::to_owned)
        })?;
        let this = Arc::clone(self);
        plan.run(&self.memory, move |plan| async move {
            // Tokens are redeemed at a named tenant: one cached for another tenant (a guest
            // one) would be returned until it expires, then this one's.
            let realm = plan
                .requested_tenant
                .as_deref()
                .filter(|requested| *requested == plan.tenant)
                .or(this.tenant_id.as_deref());
            this.acquire(&plan.tenant, realm, &plan.scopes, plan.cae, plan.claims)
                .await
        })
        .await
    }

    async fn acquire(
        &self,
        tenant: &str,
        realm: Option<&str>,
        scopes: &[String],
        cae: bool,
        claims: Option<String>,
    ) -> Result<AccessToken, CredentialError> {
        let store = if cae { &self.cae } else { &self.plain };
        if !store.exists().await {
            // No file, no account: as a selection that finds none.
            self.deselected(cae);
            return Err(unavailable(format!(
                "Shared token cache unavailable: there is no cache file at {}. Visual Studio and \
                 applications with a persistent MSAL token cache write it; Azure CLI does not \
                 (after 'az login', AzureCliCredential gets its tokens)",
                store
                    .path()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            )));
        }
        let doc = store
            .read()
            .await
            .map_err(|e| unavailable(format!("Shared token cache unavailable: {e}")))?;
        let environments: Vec<&str> = self.environments.iter().map(String::as_str).collect();
        let account = match self.select_account(&doc, &environments) {
            Ok(account) => account,
            Err(error) => {
                self.deselected(cae);
                return Err(error);
            }
        };
        self.selected(cae, &account.home_account_id);
        let mut aging = None;
        if !carries_a_challenge(claims.as_deref()) {
            let query = AccessTokenQuery {
                home_account_id: Some(Some(&account.home_account_id)),
                environments: &environments,
                client_id: None,
                realm,
                scopes,
            };
            match usable_access_token(&doc, &query) {
                Some(Cached::Fresh(token)) => return Ok(token),
                Some(Cached::Aging(token)) => aging = Some(token),
                None => {}
            }
        }
        let candidates = doc.find_refresh_tokens(&RefreshTokenQuery {
            home_account_id: &account.home_account_id,
            environments: &environments,
            client_id: None,
            family_only: true,
        });
        let redeemed = if candidates.is_empty() {
            Err(unavailable(format!(
                "Token acquisition failed for user '{}'. To fix, re-authenticate through \
                 developer tooling supporting Azure single sign on",
                quoted(&account.username)
            )))
        } else {
            let redeem = Redeem {
                credential: NAME,
                client: &self.client,
                store,
                // A rotated refresh token the file cannot take is not kept: the one redeemed
                // stays valid, and is the developer tools' sign-in.
                unwritten: None,
                refusals: Some(&self.refusals),
                client_id: AZURE_CLI_CLIENT_ID,
                client_secret: None,
                tenant,
                scopes,
                claims,
                user_grant: true,
            };
            let candidates = candidates
                .into_iter()
                .map(|token| Candidate::stored(token, store))
                .collect();
            redeem.first_success(candidates).await
        };
        match redeemed.transpose() {
            Some(redeemed) => or_aging(NAME, redeemed, aging),
            None => aging.ok_or_else(|| {
                unavailable(format!(
                    "Token acquisition failed for user '{}'",
                    quoted(&account.username)
                ))
            }),
        }
    }

    /// Notes that an acquisition selected `account`. When the file's account changed (the
    /// developer signed in as someone else), the tokens cached in memory for the previous
    /// one are dropped: each scope is asked for again, as this account.
    ///
    /// Tracked per document (`cae`): the two may name different accounts (an older sign-in
    /// left in one), and each request reads its own, so one account per credential would
    /// see a change at every switch between CAE and other requests.
    fn selected(&self, cae: bool, account: &str) {
        let changed = {
            let mut selected = self.selected.lock().unwrap_or_else(|e| e.into_inner());
            let [plain, cae_document] = &mut *selected;
            let selected = if cae { cae_document } else { plain };
            let changed = selected.as_deref().is_some_and(|last| last != account);
            if selected.as_deref() != Some(account) {
                *selected = Some(account.to_owned());
            }
            changed
        };
        if changed {
            tracing::debug!(
                credential = NAME,
                "the selected account changed; the tokens cached in memory for the previous one are dropped"
            );
            self.memory.clear();
        }
    }

    /// Notes that an acquisition found no account to select in its document (`cae`): the
    /// developer signed out (msal's `remove_account`), or no account matches the settings any
    /// more. The tokens cached in memory from that document are dropped, so that no later
    /// request is served as the account selected before (azure-identity reads the file at
    /// every request and fails at once). Only that document's: the other one's account is
    /// its own (see [`selected`](Self::selected)). Once per sign-out: nothing was selected
    /// since, so nothing of that kind was cached.
    fn deselected(&self, cae: bool) {
        let was_selected = {
            let mut selected = self.selected.lock().unwrap_or_else(|e| e.into_inner());
            let [plain, cae_document] = &mut *selected;
            let selected = if cae { cae_document } else { plain };
            selected.take().is_some()
        };
        if was_selected {
            tracing::debug!(
                credential = NAME,
                "no account is selected any more; the tokens cached in memory for the previous one are dropped"
            );
            self.memory.clear_kind(cae);
        }
    }

    /// The one account the settings select (see [`SharedTokenCacheCredential`]).
    fn select_account(
        &self,
        doc: &CacheDocument,
        environments: &[&str],
    ) -> Result<Account, CredentialError> {
        // One pass over the document, however many accounts it holds.
        let accounts = doc.accounts_with_family_refresh_tokens(environments);
        if accounts.is_empty() {
            return Err(unavailable(
                "No accounts were found in the cache.".to_owned(),
            ));
        }
        let filtered = || -> bool { self.username.is_some() || self.tenant_id.is_some() };
        // Sign-in names are case-insensitive: msal compares them lower-cased, in full Unicode
        // (Python's `str.lower`), so `Åsa` matches `åsa` too.
        let username = self.username.as_deref().map(str::to_lowercase);
        let matching: Vec<Account> = accounts
            .iter()
            .filter(|a| {
                username
                    .as_deref()
                    .is_none_or(|u| a.username.to_lowercase() == u)
            })
            .filter(|a| {
                self.tenant_id.as_deref().is_none_or(|t| {
                    a.home_account_id
                        .split_once('.')
                        .is_some_and(|(_, utid)| utid == t)
                })
            })
            .cloned()
            .collect();
        if let [one] = matching.as_slice() {
            return Ok(one.clone());
        }
        match (matching.len(), filtered()) {
            // The accounts there are named, so that a misspelt username can be told.
            (0, _) => Err(unavailable(format!(
                "No account matching the specified{} was found in the cache. Accounts found: {}",
                self.filter_text(),
                usernames(&accounts)
            ))),
            (_, false) => Err(unavailable(format!(
                "Multiple accounts were found in the cache. Use username and tenant id to \
                 disambiguate. Accounts found: {}",
                usernames(&matching)
            ))),
            (_, true) => Err(unavailable(format!(
                "Multiple accounts matching the specified{} were found in the cache: {}",
                self.filter_text(),
                usernames(&matching)
            ))),
        }
    }

    fn filter_text(&self) -> String {
        let mut text = String::new();
        if let Some(u) = &self.username {
            text.push_str(&format!(" username: {}", quoted(u)));
        }
        if let Some(t) = &self.tenant_id {
            text.push_str(&format!(" tenant: {}", quoted(t)));
        }
        text
    }
}

/// At most this many accounts are named in an error: a cache may hold many.
const NAMED_ACCOUNTS: usize = 10;
/// At most this many characters of each name an error quotes: the file wrote them, and may
/// hold anything of any length.
const NAME_CHARS: usize = 256;

/// The accounts' usernames (not secrets), the first [`NAMED_ACCOUNTS`] and how many more.
fn usernames(accounts: &[Account]) -> String {
    let mut text = accounts
        .iter()
        .take(NAMED_ACCOUNTS)
        .map(|a| {
            if a.username.is_empty() {
                format!("<no username> ({})", quoted(&a.home_account_id))
            } else {
                quoted(&a.username)
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    let more = accounts.len().saturating_sub(NAMED_ACCOUNTS);
    if more > 0 {
        text.push_str(&format!(" and {more} more"));
    }
    text
}

/// A name from the cache file (or the builder) as an error quotes it: control characters (a
/// newline, an ANSI escape), bidi controls and invisible characters replaced by spaces, as
/// other quoted text is (see [`sanitize_quoted`]), so that a file cannot forge log lines or
/// colours; at most [`NAME_CHARS`] characters.
fn quoted(name: &str) -> String {
    let head: String = name.chars().take(NAME_CHARS.saturating_add(1)).collect();
    truncate(&sanitize_quoted(&head), NAME_CHARS)
}

fn unavailable(message: String) -> CredentialError {
    CredentialError::unavailable(NAME, format!("{UNAVAILABLE} {message}"))
}

arc_credential_service!(SharedTokenCacheCredential);

impl fmt::Debug for SharedTokenCacheCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(NAME)
            .field("username", &self.inner.username)
            .field("tenant_id", &self.inner.tenant_id)
            .field(
                "multitenant_disabled",
                &self.inner.tenants.multitenant_disabled(),
            )
            .field("authority", &self.inner.client.authority().as_str())
            .field("cache", &self.inner.plain)
            .finish()
    }
}

/// Settings for a [`SharedTokenCacheCredential`].
#[derive(Default)]
pub struct SharedTokenCacheCredentialBuilder {
    username: Option<String>,
    tenant_id: Option<String>,
    settings: Settings,
}

impl SharedTokenCacheCredentialBuilder {
    /// Select the account with this username (case-insensitive), when several are
    /// cached.
    pub fn username(mut self, username: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self
    }

    /// Select the account whose home tenant is this one, and redeem its tokens there.
    pub fn tenant_id(mut self, tenant: impl Into<String>) -> Self {
        self.tenant_id = Some(tenant.into());
        self
    }

    /// The authority host, e.g.
    /// [`AZURE_GOVERNMENT`](crate::authority_hosts::AZURE_GOVERNMENT). Default:
    /// `AZURE_AUTHORITY_HOST`, else the public cloud. Must be `https`. Accounts of its cloud
    /// (host aliases included) are considered.
    pub fn authority_host(mut self, host: impl Into<String>) -> Self {
        self.settings.set_authority_host(host.into());
        self
    }

    settings_setters!(settings; http_client);

    /// Ignore per-request tenants and always use the configured one. Default: whether
    /// `AZURE_IDENTITY_DISABLE_MULTITENANTAUTH` is set. Without a configured tenant, tokens
    /// are redeemed at `organizations`.
    pub fn disable_multitenant_auth(mut self, disable: bool) -> Self {
        self.settings.set_multitenant_disabled(disable);
        self
    }

    /// Keep tokens in the shared MSAL token-cache file (see
    /// [`TokenCachePersistenceOptions`](crate::TokenCachePersistenceOptions)): other
    /// processes of the same app, and MSAL-based tools, find them there. This credential
    /// reads its accounts from that file too. Default: the shared `msal.cache` in
    /// `~/.IdentityService`, plaintext allowed (the reference's default for this credential).
    pub fn cache_options(mut self, options: crate::TokenCachePersistenceOptions) -> Self {
        self.settings.set_cache_options(options);
        self
    }

    /// Validates the settings and builds. An `AZURE_AUTHORITY_HOST` that is not Unicode is a
    /// [`ConfigError`] naming it, unless an authority host was set here.
    pub fn build(self) -> Result<SharedTokenCacheCredential, ConfigError> {
        self.build_with_vars(&Vars::default())
    }

    /// [`build`](Self::build) with `AZURE_AUTHORITY_HOST` read from `vars` (a chain's).
    pub(crate) fn build_with_vars(
        self,
        vars: &Vars,
    ) -> Result<SharedTokenCacheCredential, ConfigError> {
        let env_authority = self.settings.env_authority(NAME, vars)?;
        self.build_with_env_authority(env_authority)
    }

    /// [`build`](Self::build) with `env_authority` as the value of `AZURE_AUTHORITY_HOST`.
    pub(crate) fn build_with_env_authority(
        mut self,
        env_authority: Option<String>,
    ) -> Result<SharedTokenCacheCredential, ConfigError> {
        if let Some(t) = &self.tenant_id {
            validate_tenant_id(t).map_err(|m| ConfigError::new(format!("{NAME}: {m}")))?;
        }
        // Any requested tenant, as the reference's client at `organizations` takes any.
        self.settings.set_additionally_allowed_tenants(["*"]);
        let tenants = self.settings.tenants(
            NAME,
            Some(self.tenant_id.as_deref().unwrap_or(ORGANIZATIONS)),
        )?;
        let client = self.settings.token_client(NAME, env_authority)?;
        let (plain, cae) = self.settings.reader_files_or(NAME, || {
            crate::TokenCachePersistenceOptions::new().allow_unencrypted_storage(true)
        })?;
        Ok(SharedTokenCacheCredential {
            inner: Arc::new(Inner {
                username: self.username,
                tenant_id: self.tenant_id,
                tenants,
                environments: host_aliases(client.authority().host()),
                client,
                plain,
                cae,
                memory: TokenCache::new(NAME),
                selected: Mutex::default(),
                refusals: Refusals::default(),
            }),
        })
    }
}

impl fmt::Debug for SharedTokenCacheCredentialBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedTokenCacheCredentialBuilder")
            .field("username", &self.username)
            .field("tenant_id", &self.tenant_id)
            .field("authority_host", &self.settings.authority_host())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_quotes_at_most_256_characters_of_each_name() {
        let long = |c: char| std::iter::repeat_n(c, 1000).collect::<String>();
        let accounts = [
            Account {
                home_account_id: "uid.utid".to_owned(),
                environment: "login.microsoftonline.com".to_owned(),
                username: format!("{}@contoso.com", long('é')),
            },
            Account {
                home_account_id: long('h'),
                environment: "login.microsoftonline.com".to_owned(),
                username: String::new(),
            },
        ];
        let text = usernames(&accounts);
        let (user, rest) = text.split_once(", ").unwrap();
        assert_eq!(user, format!("{}…", &long('é')[..512]));
        assert_eq!(rest, format!("<no username> ({}…)", &long('h')[..256]));
    }

    #[test]
    fn an_error_quotes_names_without_control_characters() {
        let accounts = [
            Account {
                home_account_id: "uid.utid".to_owned(),
                environment: "login.microsoftonline.com".to_owned(),
                username: "alice@contoso.com\nERROR forged line\u{1b}[31mred\u{7}".to_owned(),
            },
            Account {
                home_account_id: "uid2\r\n.utid".to_owned(),
                environment: "login.microsoftonline.com".to_owned(),
                username: String::new(),
            },
        ];
        let text = usernames(&accounts);
        assert!(!text.chars().any(char::is_control), "{text:?}");
        assert_eq!(
            text,
            "alice@contoso.com ERROR forged line [31mred , <no username> (uid2  .utid)"
        );
        assert_eq!(quoted("bob\u{1b}[0m\n"), "bob [0m ");
        // Nor the format characters that reorder or hide text.
        assert_eq!(quoted("a\u{202e}b\u{200b}c\u{2066}d"), "a b c d");
    }

    #[test]
    fn an_error_names_ten_accounts_and_counts_the_rest() {
        let accounts: Vec<Account> = (0..13)
            .map(|i| Account {
                home_account_id: format!("uid{i}.utid"),
                environment: "login.microsoftonline.com".to_owned(),
                username: format!("user{i}@contoso.com"),
            })
            .collect();
        let text = usernames(&accounts);
        assert!(
            text.starts_with("user0@contoso.com, user1@contoso.com"),
            "{text}"
        );
        assert!(text.ends_with("user9@contoso.com and 3 more"), "{text}");
        assert_eq!(
            usernames(&accounts[..2]),
            "user0@contoso.com, user1@contoso.com"
        );
    }
}
