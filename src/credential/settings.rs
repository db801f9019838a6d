//! Settings that most credential builders share (authority, allowed tenants, HTTP client,
//! cache files), and how a builder turns them into the parts it needs.
//!
//! The builders' public setters of these are written once, by [`settings_setters`]; a builder
//! whose credential uses a value differently writes that setter by hand, opening with the
//! same doc text and adding what differs. The `vars` setter is written once too, by
//! [`vars_setters`], with a builder's own paragraph after the shared text when it has one.

use std::fmt;

use super::cache_options::TokenCachePersistenceOptions;
use super::env::Vars;
use crate::cache::TokenCache;
use crate::distributed::{DistributedCache, Identity, SharedLevel};
use crate::entra::authority::{AZURE_AUTHORITY_HOST, Authority, TenantPolicy};
use crate::entra::persistence::LegacyWrites;
use crate::entra::store::TokenStore;
use crate::entra::token_client::TokenClient;
use crate::error::ConfigError;
use crate::transport::HttpClient;

/// The shared settings of a builder.
#[derive(Clone, Default)]
pub(crate) struct Settings {
    authority_host: Option<String>,
    additionally_allowed_tenants: Vec<String>,
    http_client: Option<HttpClient>,
    cache_options: Option<TokenCachePersistenceOptions>,
    multitenant_disabled: Option<bool>,
    distributed: Option<DistributedCache>,
}

impl Settings {
    pub(crate) fn set_authority_host(&mut self, host: String) {
        self.authority_host = Some(host);
    }

    pub(crate) fn set_additionally_allowed_tenants<I, S>(&mut self, tenants: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.additionally_allowed_tenants = tenants.into_iter().map(Into::into).collect();
    }

    /// Adds tenants to those given with `set_additionally_allowed_tenants`.
    pub(crate) fn add_additionally_allowed_tenants(&mut self, tenants: Vec<String>) {
        self.additionally_allowed_tenants.extend(tenants);
    }

    pub(crate) fn set_http_client(&mut self, client: HttpClient) {
        self.http_client = Some(client);
    }

    pub(crate) fn set_cache_options(&mut self, options: TokenCachePersistenceOptions) {
        self.cache_options = Some(options);
    }

    pub(crate) fn set_multitenant_disabled(&mut self, disabled: bool) {
        self.multitenant_disabled = Some(disabled);
    }

    pub(crate) fn set_distributed_cache(&mut self, cache: DistributedCache) {
        self.distributed = Some(cache);
    }

    /// The in-memory token cache of the credential `name`, signing in as `client_id` at
    /// `client`'s authority: over the distributed cache when one was given. Its entries are
    /// keyed by the whole normalised authority (scheme, host, port, path): two authorities on
    /// one host, on different ports or paths, may be different token services.
    pub(crate) fn token_cache(
        &self,
        name: &'static str,
        client: &TokenClient,
        client_id: &str,
    ) -> TokenCache {
        token_cache(
            name,
            self.distributed.as_ref(),
            client.authority().as_str(),
            client_id,
            name.to_owned(),
        )
    }

    /// Unless set in code, `AZURE_IDENTITY_DISABLE_MULTITENANTAUTH` is read from `vars` (a
    /// builder's `vars(…)`) rather than the process environment.
    pub(crate) fn with_multitenant_default(mut self, vars: &Vars) -> Self {
        if self.multitenant_disabled.is_none() {
            self.multitenant_disabled = Some(vars.multitenant_disabled());
        }
        self
    }

    /// The authority host given to the builder, if any.
    pub(crate) fn authority_host(&self) -> Option<&str> {
        self.authority_host.as_deref()
    }

    /// The tenant rules: the configured tenant (validated), the allowed list, and whether
    /// per-request tenants are ignored (default: `AZURE_IDENTITY_DISABLE_MULTITENANTAUTH`).
    pub(crate) fn tenants(
        &self,
        name: &str,
        tenant: Option<&str>,
    ) -> Result<TenantPolicy, ConfigError> {
        let disabled = self
            .multitenant_disabled
            .unwrap_or_else(|| Vars::default().multitenant_disabled());
        TenantPolicy::new(tenant, self.additionally_allowed_tenants.clone(), disabled)
            .map_err(|e| ConfigError::new(format!("{name}: {e}")))
    }

    /// The token client: the explicit authority, else `env_authority` (the value of
    /// `AZURE_AUTHORITY_HOST`), else the public cloud; the HTTP client given, else the default.
    pub(crate) fn token_client(
        &self,
        name: &str,
        env_authority: Option<String>,
    ) -> Result<TokenClient, ConfigError> {
        let authority = Authority::resolve(self.authority_host.as_deref(), env_authority)
            .map_err(|e| ConfigError::new(format!("{name}: {e}")))?;
        Ok(TokenClient::new(
            self.http_client.clone().unwrap_or_default(),
            authority,
        ))
    }

    /// `AZURE_AUTHORITY_HOST` from `vars` (the process environment, or a builder's `vars(…)`),
    /// for [`token_client`](Self::token_client): not read when an authority host was set in
    /// code, which wins. A value that is not Unicode is refused naming the variable: taken as
    /// unset, it would send the requests to the public cloud rather than the cloud meant.
    pub(crate) fn env_authority(
        &self,
        name: &str,
        vars: &Vars,
    ) -> Result<Option<String>, ConfigError> {
        if self.authority_host.is_some() {
            return Ok(None);
        }
        vars.text(AZURE_AUTHORITY_HOST).map_err(|e| {
            ConfigError::new(format!(
                "{name}: {e}; it must be the authority's https URL, such as {}",
                crate::authority_hosts::AZURE_GOVERNMENT
            ))
        })
    }

    /// The cache files (ordinary, CAE) when cache options were given.
    pub(crate) fn files(
        &self,
        name: &str,
    ) -> Result<Option<(TokenStore, TokenStore)>, ConfigError> {
        self.cache_options
            .as_ref()
            .map(|options| stores(name, options, LegacyWrites::Copy))
            .transpose()
    }

    /// The cache files (ordinary, CAE) of the cache options given, else of `default`, for a
    /// credential that reads another tool's sign-in there: its writes never create
    /// `msal.cache.nocae` from the legacy `msal.cache` (see [`LegacyWrites::Skip`]).
    pub(crate) fn reader_files_or(
        &self,
        name: &str,
        default: impl FnOnce() -> TokenCachePersistenceOptions,
    ) -> Result<(TokenStore, TokenStore), ConfigError> {
        match &self.cache_options {
            Some(options) => stores(name, options, LegacyWrites::Skip),
            None => stores(name, &default(), LegacyWrites::Skip),
        }
    }
}

/// Writes, inside a builder's `impl`, public setters of its [`Settings`], each with the one
/// doc text it has on every builder: `settings_setters!(settings; authority_host, http_client);`,
/// where `settings` is the path of the builder's `Settings` field (`tool.settings`, say).
macro_rules! settings_setters {
    // The field path goes on as one token tree: a repetition cannot nest in the setters'.
    (@each $field:tt $($setter:ident)+) => {
        $($crate::credential::settings::settings_setters!(@one $setter $field);)+
    };
    (@one authority_host [$($f:ident).+]) => {
        /// The authority host, e.g.
        /// [`AZURE_GOVERNMENT`](crate::authority_hosts::AZURE_GOVERNMENT). Default:
        /// `AZURE_AUTHORITY_HOST`, else the public cloud. Must be `https`.
        pub fn authority_host(mut self, host: impl Into<String>) -> Self {
            self.$($f).+.set_authority_host(host.into());
            self
        }
    };
    (@one additionally_allowed_tenants [$($f:ident).+]) => {
        /// Tenants besides the configured one that requests may name; `"*"` allows any.
        pub fn additionally_allowed_tenants<I, S>(mut self, tenants: I) -> Self
        where
            I: IntoIterator<Item = S>,
            S: Into<String>,
        {
            self.$($f).+.set_additionally_allowed_tenants(tenants);
            self
        }
    };
    (@one http_client [$($f:ident).+]) => {
        /// The HTTP client for token requests. Default:
        /// [`HttpClient::new`](crate::HttpClient::new).
        pub fn http_client(mut self, client: $crate::HttpClient) -> Self {
            self.$($f).+.set_http_client(client);
            self
        }
    };
    (@one cache_options [$($f:ident).+]) => {
        /// Keep tokens in the shared MSAL token-cache file (see
        /// [`TokenCachePersistenceOptions`](crate::TokenCachePersistenceOptions)): other
        /// processes of the same app, and MSAL-based tools, find them there. Default: tokens are
        /// kept in memory only.
        pub fn cache_options(mut self, options: $crate::TokenCachePersistenceOptions) -> Self {
            self.$($f).+.set_cache_options(options);
            self
        }
    };
    (@one disable_multitenant_auth [$($f:ident).+]) => {
        /// Ignore per-request tenants and always use the configured one. Default: whether
        /// `AZURE_IDENTITY_DISABLE_MULTITENANTAUTH` is set.
        pub fn disable_multitenant_auth(mut self, disable: bool) -> Self {
            self.$($f).+.set_multitenant_disabled(disable);
            self
        }
    };
    (@one distributed_cache [$($f:ident).+]) => {
        /// Share tokens with the other processes of a fleet through this
        /// [`DistributedCache`](crate::DistributedCache), a second level under the in-memory
        /// cache: one process asks Microsoft Entra ID, the others use its token.
        pub fn distributed_cache(mut self, cache: $crate::DistributedCache) -> Self {
            self.$($f).+.set_distributed_cache(cache);
            self
        }
    };
    ($($field:ident).+; $($setter:ident),+) => {
        $crate::credential::settings::settings_setters!(@each [$($field).+] $($setter)+);
    };
}
pub(crate) use settings_setters;

/// Writes, inside a builder's `impl`, its public `vars` setter, with the one doc text it has on
/// every builder, and the crate's `vars_as_set`, which takes a [`Vars`] as it is (another
/// builder's, handed on with values that need not be Unicode, which the public setter's text
/// cannot carry): `vars_setters!(vars);`, where `vars` is the path of the builder's `Vars`
/// field. Doc comments after another `;` are a paragraph of their own after that text (what
/// the variables mean to that builder).
macro_rules! vars_setters {
    ($($f:ident).+ $(; $(#[$extra:meta])+)?) => {
        /// Reads the environment variables from these pairs instead of the process
        /// environment (for tests, or configuration that comes from elsewhere).
        $(
            ///
            $(#[$extra])+
        )?
        pub fn vars<I, K, V>(self, vars: I) -> Self
        where
            I: IntoIterator<Item = (K, V)>,
            K: Into<String>,
            V: Into<String>,
        {
            self.vars_as_set($crate::credential::env::Vars::from_pairs(vars))
        }

        /// [`vars`](Self::vars) with values as set, Unicode or not (a chain hands its own on
        /// so); `Vars::default()` is the process environment, as when neither is called.
        pub(crate) fn vars_as_set(mut self, vars: $crate::credential::env::Vars) -> Self {
            self.$($f).+ = vars;
            self
        }
    };
}
pub(crate) use vars_setters;

/// The in-memory token cache of the credential `name`, over `distributed` when given: its
/// entries are keyed by `authority` (the normalised authority URL, or where a token source
/// without one is), the `client_id` and the `identity` (the credential's name, and which
/// identity when it can be several), plus each request's tenant, scopes and CAE flag.
pub(crate) fn token_cache(
    name: &'static str,
    distributed: Option<&DistributedCache>,
    authority: &str,
    client_id: &str,
    identity: String,
) -> TokenCache {
    let shared = distributed.map(|cache| {
        let identity = Identity {
            authority: authority.to_owned(),
            client_id: client_id.to_owned(),
            identity,
        };
        SharedLevel::new(cache.clone(), identity)
    });
    TokenCache::new(name).with_shared(shared)
}

fn stores(
    name: &str,
    options: &TokenCachePersistenceOptions,
    legacy_writes: LegacyWrites,
) -> Result<(TokenStore, TokenStore), ConfigError> {
    let paths = options.resolve(name)?;
    Ok((
        TokenStore::file(paths.file(false), legacy_writes),
        TokenStore::file(paths.file(true), legacy_writes),
    ))
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("authority_host", &self.authority_host)
            .field(
                "additionally_allowed_tenants",
                &self.additionally_allowed_tenants,
            )
            .field("cache_options", &self.cache_options)
            .field("distributed_cache", &self.distributed)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::{Settings, Vars};

    /// A builder's `vars(…)` decide `AZURE_IDENTITY_DISABLE_MULTITENANTAUTH`, not the process
    /// environment; a value set in code wins over both.
    #[test]
    fn a_builders_vars_decide_multitenant_auth_unless_set_in_code() {
        let flag = "AZURE_IDENTITY_DISABLE_MULTITENANTAUTH";
        let resolved = |settings: Settings| {
            let policy = settings.tenants("Test", Some("home")).unwrap();
            policy.resolve(Some("other")).unwrap().map(str::to_owned)
        };
        let allow_any = || {
            let mut settings = Settings::default();
            settings.set_additionally_allowed_tenants(["*"]);
            settings
        };
        let off = Vars::from_pairs([(flag, "1")]);
        let absent = Vars::from_pairs([(flag, "")]);
        assert_eq!(
            resolved(allow_any().with_multitenant_default(&off)).as_deref(),
            Some("home"),
            "disabled by the vars: the configured tenant"
        );
        assert_eq!(
            resolved(allow_any().with_multitenant_default(&absent)).as_deref(),
            Some("other"),
            "an empty value does not disable it"
        );
        let mut in_code = allow_any();
        in_code.set_multitenant_disabled(false);
        assert_eq!(
            resolved(in_code.with_multitenant_default(&off)).as_deref(),
            Some("other"),
            "set in code: the vars are not asked"
        );
    }

    /// The doc text every builder's setter of this name opens with (a builder may add a
    /// sentence saying how its credential differs), and how many builders have it (by hand or
    /// by [`settings_setters`]).
    const SETTERS: &[(&str, &str, usize)] = &[
        (
            "authority_host",
            "The authority host, e.g. [`AZURE_GOVERNMENT`](crate::authority_hosts::AZURE_GOVERNMENT). \
             Default: `AZURE_AUTHORITY_HOST`, else the public cloud. Must be `https`.",
            7,
        ),
        (
            "additionally_allowed_tenants",
            "Tenants besides the configured one that requests may name; `\"*\"` allows any.",
            10,
        ),
        (
            "http_client",
            "The HTTP client for token requests. Default:",
            10,
        ),
        (
            "cache_options",
            "Keep tokens in the shared MSAL token-cache file (see \
             [`TokenCachePersistenceOptions`](crate::TokenCachePersistenceOptions)): other \
             processes of the same app, and MSAL-based tools, find them there.",
            6,
        ),
        (
            "disable_multitenant_auth",
            "Ignore per-request tenants and always use the configured one. Default: whether \
             `AZURE_IDENTITY_DISABLE_MULTITENANTAUTH` is set.",
            9,
        ),
        (
            "distributed_cache",
            "Share tokens with the other processes of a fleet through this \
             [`DistributedCache`](crate::DistributedCache), a second level under the in-memory \
             cache: one process asks Microsoft Entra ID, the others use its token.",
            7,
        ),
        (
            "vars",
            "Reads the environment variables from these pairs instead of the process \
             environment (for tests, or configuration that comes from elsewhere).",
            4,
        ),
    ];

    fn sources(dir: &Path, out: &mut Vec<(String, String)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                out.push((path.display().to_string(), text));
            }
        }
    }

    /// The doc comment right above each `pub fn {name}`, joined into one line: attributes
    /// and a macro's repetition marks in between are passed over (`vars_setters`'s optional
    /// paragraph, which follows the opening, is taken as part of the doc).
    fn docs_of(text: &str, name: &str) -> Vec<String> {
        let lines: Vec<&str> = text.lines().collect();
        let signature = format!("pub fn {name}(");
        let generic = format!("pub fn {name}<");
        let mut found = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            let line = line.trim_start();
            if !(line.starts_with(&signature) || line.starts_with(&generic)) {
                continue;
            }
            let mut doc: Vec<&str> = lines[..i]
                .iter()
                .rev()
                .map(|l| l.trim_start())
                .filter(|l| {
                    !(l.starts_with("#[")
                        || l.starts_with("$(")
                        || matches!(*l, ")?" | ")*" | ")+"))
                })
                .take_while(|l| l.starts_with("///"))
                .map(|l| l.trim_start_matches("///").trim())
                .collect();
            doc.reverse();
            found.push(doc.join(" "));
        }
        found
    }

    /// The setters that the `settings_setters!(field; setters)` and `vars_setters!(field)`
    /// calls in `text` write.
    fn generated(text: &str) -> impl Iterator<Item = &str> {
        let settings = text
            .split("settings_setters!(")
            .skip(1)
            .filter_map(|call| call.split_once(')')?.0.split_once(';'))
            .flat_map(|(_, setters)| setters.split(',').map(str::trim));
        let vars = text.matches("vars_setters!(").map(|_| "vars");
        settings.chain(vars)
    }

    #[test]
    fn a_setter_has_the_same_doc_text_on_every_builder() {
        let mut files = Vec::new();
        sources(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("src/credential"),
            &mut files,
        );
        for (name, opening, builders) in SETTERS {
            let mut count = 0;
            for (path, text) in &files {
                // The macro's setters count once per builder that calls it, not where written.
                if Path::new(path).file_name() != Some("settings.rs".as_ref()) {
                    count += docs_of(text, name).len();
                    count += generated(text).filter(|setter| setter == name).count();
                }
                for doc in docs_of(text, name) {
                    assert!(
                        doc.starts_with(opening),
                        "{path}: `{name}` reads {doc:?}, not {opening:?}…"
                    );
                }
            }
            assert_eq!(count, *builders, "builders with a `{name}` setter");
        }
    }
}
