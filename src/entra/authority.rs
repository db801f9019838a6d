//! Authority hosts and the aliases of each cloud, authority normalisation, tenant-id
//! validation and per-request tenant resolution.

use url::Url;

use crate::error::ConfigError;

/// Well-known Microsoft Entra authority hosts.
pub mod authority_hosts {
    /// Azure public cloud.
    pub const AZURE_PUBLIC_CLOUD: &str = "https://login.microsoftonline.com";
    /// Azure US Government.
    pub const AZURE_GOVERNMENT: &str = "https://login.microsoftonline.us";
    /// Azure operated by 21Vianet (China).
    pub const AZURE_CHINA: &str = "https://login.chinacloudapi.cn";
}

/// Environment variable that overrides the default authority host.
pub(crate) const AZURE_AUTHORITY_HOST: &str = "AZURE_AUTHORITY_HOST";
/// Environment variable that pins every credential to its configured tenant.
pub(crate) const AZURE_IDENTITY_DISABLE_MULTITENANTAUTH: &str =
    "AZURE_IDENTITY_DISABLE_MULTITENANTAUTH";

/// A normalised authority: `https://host[:port][/path]`, no trailing slash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Authority {
    base: String,
    host: String,
}

impl Authority {
    /// Normalises an authority host: a bare host gets `https://`, surrounding spaces and
    /// trailing slashes go, a path is kept; anything but `https` is rejected.
    pub(crate) fn parse(input: &str) -> Result<Self, ConfigError> {
        let raw = input.trim();
        if raw.is_empty() {
            return Err(ConfigError::new(
                "authority host is empty; use e.g. \"https://login.microsoftonline.com\"",
            ));
        }
        // Messages quote the input, without any user information (`https://user:secret@…`).
        let shown = without_userinfo(raw);
        let trimmed = shown.as_str();
        let with_scheme = if raw.contains("://") {
            raw.to_owned()
        } else {
            format!("https://{raw}")
        };
        let url = Url::parse(&with_scheme).map_err(|e| {
            ConfigError::new(format!(
                "authority host {trimmed:?} is not a valid URL: {e}"
            ))
        })?;
        if url.scheme() != "https" {
            return Err(ConfigError::new(format!(
                "authority host {trimmed:?} must be a TLS protected (https) URL"
            )));
        }
        let Some(host) = url.host_str() else {
            return Err(ConfigError::new(format!(
                "authority host {trimmed:?} has no host name"
            )));
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(ConfigError::new(format!(
                "authority host {trimmed:?} must not contain user information (a user name or \
                 password before '@'); remove it"
            )));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(ConfigError::new(format!(
                "authority host {trimmed:?} must not have a query or fragment"
            )));
        }
        let host = host.to_owned();
        let base = url.as_str().trim_end_matches('/').to_owned();
        Ok(Self { base, host })
    }

    /// The authority from an explicit option, else `AZURE_AUTHORITY_HOST`, else the public
    /// cloud.
    pub(crate) fn resolve(
        explicit: Option<&str>,
        from_env: Option<String>,
    ) -> Result<Self, ConfigError> {
        match (
            explicit,
            from_env.as_deref().filter(|v| !v.trim().is_empty()),
        ) {
            (Some(host), _) => Self::parse(host),
            (None, Some(host)) => Self::parse(host)
                .map_err(|e| ConfigError::new(format!("{AZURE_AUTHORITY_HOST}: {}", e.message()))),
            (None, None) => Self::parse(authority_hosts::AZURE_PUBLIC_CLOUD),
        }
    }

    /// `https://host[:port][/path]`.
    pub(crate) fn as_str(&self) -> &str {
        &self.base
    }

    /// The host name without the port: the `environment` of MSAL cache entries.
    pub(crate) fn host(&self) -> &str {
        &self.host
    }

    /// `{authority}/{tenant}/oauth2/v2.0/token`; for the AD FS tenant `adfs`,
    /// `{authority}/adfs/oauth2/token`.
    pub(crate) fn token_endpoint(&self, tenant: &str) -> String {
        self.endpoint(tenant, "token")
    }

    /// `{authority}/{tenant}/oauth2/v2.0/devicecode`: the device authorization endpoint; for
    /// `adfs`, `{authority}/adfs/oauth2/devicecode`.
    pub(crate) fn device_code_endpoint(&self, tenant: &str) -> String {
        self.endpoint(tenant, "devicecode")
    }

    /// AD FS has no `v2.0` paths: msal finds its endpoints in the openid-configuration at
    /// `/adfs/.well-known/openid-configuration` (no `/v2.0`), which AD FS 2016 and later
    /// publish as `/adfs/oauth2/token` and `/adfs/oauth2/devicecode`.
    fn endpoint(&self, tenant: &str, name: &str) -> String {
        if tenant.eq_ignore_ascii_case("adfs") {
            format!("{}/adfs/oauth2/{name}", self.base)
        } else {
            format!("{}/{tenant}/oauth2/v2.0/{name}", self.base)
        }
    }
}

/// Hosts of one cloud (entra-protocol: known aliases).
const HOST_ALIASES: &[&[&str]] = &[
    &[
        "login.microsoftonline.com",
        "login.windows.net",
        "login.microsoft.com",
        "sts.windows.net",
    ],
    &["login.chinacloudapi.cn", "login.partner.microsoftonline.cn"],
    &["login.microsoftonline.us", "login.usgovcloudapi.net"],
];

/// The hosts that count as the authority host's cloud: its known aliases, else the host
/// alone. MSAL cache entries name their cloud by one of these (their `environment`).
pub(crate) fn host_aliases(host: &str) -> Vec<String> {
    HOST_ALIASES
        .iter()
        .find(|set| set.iter().any(|h| h.eq_ignore_ascii_case(host)))
        .map(|set| set.iter().map(|h| (*h).to_owned()).collect())
        .unwrap_or_else(|| vec![host.to_owned()])
}

/// `input` for messages: everything up to its last `@` replaced by `***`. Where user
/// information ends cannot be told from a malformed URL (a password may hold `/`, `?`, `#`
/// or `://`), so nothing before any `@` is ever shown, the scheme included.
fn without_userinfo(input: &str) -> String {
    match input.rsplit_once('@') {
        Some((_, after)) => format!("***@{after}"),
        None => input.to_owned(),
    }
}

/// Checks a tenant id: ASCII letters, digits, `-` and `.` only (GUIDs, domain names,
/// `organizations`, `common`). It goes into a URL path, so nothing else may pass.
///
/// Errors never quote the value: a client secret put in `AZURE_TENANT_ID` by mistake would
/// land in the message. They name the offending character, its position and the length.
pub(crate) fn validate_tenant_id(tenant: &str) -> Result<(), String> {
    if tenant.is_empty() {
        return Err("tenant id is empty; use the directory's GUID or domain name".into());
    }
    let length = tenant.chars().count();
    if let Some((index, bad)) = tenant
        .chars()
        .enumerate()
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '.'))
    {
        let position = index.saturating_add(1);
        return Err(format!(
            "tenant id contains {bad:?} at character {position} of {length}; only ASCII \
             letters, digits, '-' and '.' are allowed (a GUID or a domain such as \
             contoso.onmicrosoft.com)"
        ));
    }
    // GUIDs and domain names start with a letter or digit; a leading '-' would read as an
    // option where a tenant reaches a command line (`az --tenant -h`).
    if let Some(first) = tenant.chars().next().filter(|c| !c.is_ascii_alphanumeric()) {
        return Err(format!(
            "tenant id starts with {first:?} (character 1 of {length}); it must start with a \
             letter or digit (a GUID or a domain such as contoso.onmicrosoft.com)"
        ));
    }
    Ok(())
}

/// The tenants a credential may request tokens from.
#[derive(Clone, Debug)]
pub(crate) struct TenantPolicy {
    /// `None` for credentials without a tenant of their own (Azure CLI's current account).
    tenant: Option<String>,
    additionally_allowed: Vec<String>,
    multitenant_disabled: bool,
}

impl TenantPolicy {
    /// Validates the configured tenant and the allowed list (`*` allows any tenant).
    pub(crate) fn new(
        tenant: Option<&str>,
        additionally_allowed: Vec<String>,
        multitenant_disabled: bool,
    ) -> Result<Self, ConfigError> {
        if let Some(tenant) = tenant {
            validate_tenant_id(tenant).map_err(ConfigError::new)?;
        }
        for allowed in additionally_allowed.iter().filter(|t| *t != "*") {
            validate_tenant_id(allowed)
                .map_err(|e| ConfigError::new(format!("additionally_allowed_tenants: {e}")))?;
        }
        Ok(Self {
            tenant: tenant.map(str::to_owned),
            additionally_allowed,
            multitenant_disabled,
        })
    }

    /// The configured tenant.
    pub(crate) fn tenant(&self) -> Option<&str> {
        self.tenant.as_deref()
    }

    /// Whether per-request tenants are ignored.
    pub(crate) fn multitenant_disabled(&self) -> bool {
        self.multitenant_disabled
    }

    /// The tenant to use for a request, in the reference's order: none or the configured
    /// one → configured; `adfs` or multitenant auth disabled → configured; no configured
    /// tenant → requested; allowed (`*` or listed) → requested; no list and configured
    /// `organizations` → requested; else an error.
    pub(crate) fn resolve<'a>(
        &'a self,
        requested: Option<&'a str>,
    ) -> Result<Option<&'a str>, String> {
        let configured = self.tenant.as_deref();
        let Some(requested) = requested else {
            return Ok(configured);
        };
        // The requested tenant is not looked at when it is not used (azure-identity returns
        // the configured one first): with multitenant auth disabled any request goes.
        if configured == Some(requested)
            || configured.is_some_and(|t| t.eq_ignore_ascii_case("adfs"))
            || self.multitenant_disabled
        {
            return Ok(configured);
        }
        // Validated here too: a per-request tenant reaches the URL path like the configured one.
        validate_tenant_id(requested)?;
        // A credential without a tenant of its own (a CLI's current account) has none to
        // protect: any requested tenant goes, whatever the list.
        if configured.is_none() {
            return Ok(Some(requested));
        }
        let allowed = self
            .additionally_allowed
            .iter()
            .any(|t| t == "*" || t == requested);
        if allowed || (self.additionally_allowed.is_empty() && configured == Some("organizations"))
        {
            return Ok(Some(requested));
        }
        Err(format!(
            "The current credential is not configured to acquire tokens for tenant {requested}. \
             To enable acquiring tokens for this tenant add it to the additionally_allowed_tenants \
             when creating the credential, or add \"*\" to additionally_allowed_tenants to allow \
             acquiring tokens for any tenant. EnvironmentCredential and DefaultAzureCredential \
             also take them from AZURE_ADDITIONALLY_ALLOWED_TENANTS (separated by ';')."
        ))
    }

    /// [`resolve`](Self::resolve) for credentials that always have a tenant.
    pub(crate) fn resolve_required<'a>(
        &'a self,
        requested: Option<&'a str>,
    ) -> Result<&'a str, String> {
        self.resolve(requested)?
            .ok_or_else(|| "no tenant is configured; set a tenant id".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_normalisation_table() {
        let cases = [
            (
                "login.microsoftonline.com",
                "https://login.microsoftonline.com",
            ),
            (
                "https://login.microsoftonline.com/",
                "https://login.microsoftonline.com",
            ),
            (
                "  https://login.microsoftonline.us//  ",
                "https://login.microsoftonline.us",
            ),
            (
                "https://my.host:8443/custom/",
                "https://my.host:8443/custom",
            ),
            ("my.host:8443", "https://my.host:8443"),
            ("https://127.0.0.1:4443", "https://127.0.0.1:4443"),
        ];
        for (input, want) in cases {
            assert_eq!(Authority::parse(input).unwrap().as_str(), want, "{input}");
        }
        assert_eq!(
            Authority::parse("https://my.host:8443/x").unwrap().host(),
            "my.host"
        );
    }

    #[test]
    fn non_https_authorities_are_rejected() {
        for input in [
            "http://login.microsoftonline.com",
            "ftp://x",
            "",
            "  ",
            "https://u:p@h",
            "https://h/?q=1",
        ] {
            let err = Authority::parse(input).unwrap_err();
            assert!(!err.message().is_empty(), "{input}");
        }
        for input in [
            "https://user:hunter2@login.microsoftonline.com/",
            "login.microsoftonline.com:hunter2@evil",
            "http://hunter2@h",
            "https://hunter2:@h/path?q",
            "https://a@b:hunter2@h",
            // A '/', '?', '#' or "://" in the password: the authority part seems to end there.
            "https://user:pa/ss-hunter2@login.example",
            "https://hunter2:pa?ss@login.example",
            "https://hunter2:pa#ss@login.example",
            "hunter2:pa://ss@login.example",
            "https://user:hunter2/x@login.example/path",
        ] {
            let err = Authority::parse(input).unwrap_err();
            assert!(!err.message().contains("hunter2"), "{err}");
            assert!(err.message().contains("***@"), "{err}");
        }
        let err = Authority::parse("http://localhost").unwrap_err();
        assert!(
            err.message()
                .contains("must be a TLS protected (https) URL"),
            "{err}"
        );
    }

    #[test]
    fn authority_precedence_is_explicit_then_env_then_public_cloud() {
        let env = Some("https://login.microsoftonline.us".to_owned());
        assert_eq!(
            Authority::resolve(Some(authority_hosts::AZURE_CHINA), env.clone())
                .unwrap()
                .as_str(),
            "https://login.chinacloudapi.cn"
        );
        assert_eq!(
            Authority::resolve(None, env).unwrap().as_str(),
            authority_hosts::AZURE_GOVERNMENT
        );
        assert_eq!(
            Authority::resolve(None, None).unwrap().as_str(),
            authority_hosts::AZURE_PUBLIC_CLOUD
        );
        let err = Authority::resolve(None, Some("http://x".into())).unwrap_err();
        assert!(err.message().starts_with("AZURE_AUTHORITY_HOST:"), "{err}");
    }

    #[test]
    fn token_endpoint_has_entra_shape() {
        let a = Authority::parse("https://my.host:8443/custom").unwrap();
        assert_eq!(
            a.token_endpoint("contoso"),
            "https://my.host:8443/custom/contoso/oauth2/v2.0/token"
        );
    }

    #[test]
    fn the_adfs_tenant_has_ad_fs_paths() {
        let a = Authority::parse("https://adfs.contoso.test").unwrap();
        for tenant in ["adfs", "ADFS"] {
            assert_eq!(
                a.token_endpoint(tenant),
                "https://adfs.contoso.test/adfs/oauth2/token"
            );
            assert_eq!(
                a.device_code_endpoint(tenant),
                "https://adfs.contoso.test/adfs/oauth2/devicecode"
            );
        }
    }

    #[test]
    fn host_aliases_cover_the_cloud_or_just_the_host() {
        assert_eq!(host_aliases("login.windows.net").len(), 4);
        assert!(
            host_aliases("LOGIN.microsoftonline.us")
                .contains(&"login.usgovcloudapi.net".to_owned())
        );
        assert_eq!(host_aliases("127.0.0.1"), ["127.0.0.1"]);
    }

    #[test]
    fn tenant_id_table() {
        for ok in [
            "72f988bf-86f1-41af-91ab-2d7cd011db47",
            "contoso.onmicrosoft.com",
            "organizations",
            "common",
            "adfs",
        ] {
            assert!(validate_tenant_id(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", " ", "a b", "a_b", "a/b", "a\\b", "a\"b", "a'b", "a|b", "a@b", "tenänt", "a?b",
            "a#b", "%2F",
        ] {
            assert!(validate_tenant_id(bad).is_err(), "{bad:?}");
        }
        // A client secret in AZURE_TENANT_ID by mistake: named by character, never quoted.
        let err = validate_tenant_id("Abc8Q~hunter2.secret-value").unwrap_err();
        assert!(
            err.starts_with("tenant id contains '~' at character 6 of 26;"),
            "{err}"
        );
        assert!(!err.contains("hunter2") && !err.contains("Abc8Q"), "{err}");
        let err = validate_tenant_id("-hunter2").unwrap_err();
        assert!(
            err.starts_with("tenant id starts with '-' (character 1 of 8);"),
            "{err}"
        );
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn tenant_resolution_rules() {
        let strict = TenantPolicy::new(Some("home"), vec![], false).unwrap();
        assert_eq!(strict.resolve(None).unwrap(), Some("home"));
        assert_eq!(strict.resolve(Some("home")).unwrap(), Some("home"));
        let err = strict.resolve(Some("other")).unwrap_err();
        assert!(
            err.contains("not configured to acquire tokens for tenant other"),
            "{err}"
        );
        assert!(err.contains("additionally_allowed_tenants"), "{err}");
        assert!(err.contains("AZURE_ADDITIONALLY_ALLOWED_TENANTS"), "{err}");
        // Comparison is exact.
        assert!(strict.resolve(Some("HOME")).is_err());

        let listed = TenantPolicy::new(Some("home"), vec!["other".into()], false).unwrap();
        assert_eq!(listed.resolve(Some("other")).unwrap(), Some("other"));
        assert!(listed.resolve(Some("third")).is_err());

        let any = TenantPolicy::new(Some("home"), vec!["*".into()], false).unwrap();
        assert_eq!(any.resolve(Some("third")).unwrap(), Some("third"));

        let disabled = TenantPolicy::new(Some("home"), vec!["*".into()], true).unwrap();
        assert_eq!(disabled.resolve(Some("third")).unwrap(), Some("home"));
        // An unused requested tenant is not validated: disabled means the configured one.
        let disabled_unlisted = TenantPolicy::new(Some("home"), vec![], true).unwrap();
        assert_eq!(
            disabled_unlisted.resolve(Some("a/b")).unwrap(),
            Some("home")
        );
        assert_eq!(disabled.resolve(Some("")).unwrap(), Some("home"));
        let adfs_odd = TenantPolicy::new(Some("ADFS"), vec![], false).unwrap();
        assert_eq!(adfs_odd.resolve(Some("a b")).unwrap(), Some("ADFS"));

        let adfs = TenantPolicy::new(Some("adfs"), vec![], false).unwrap();
        assert_eq!(adfs.resolve(Some("third")).unwrap(), Some("adfs"));

        let orgs = TenantPolicy::new(Some("organizations"), vec![], false).unwrap();
        assert_eq!(orgs.resolve(Some("third")).unwrap(), Some("third"));
        let orgs_listed =
            TenantPolicy::new(Some("organizations"), vec!["x".into()], false).unwrap();
        assert!(orgs_listed.resolve(Some("third")).is_err());

        // No configured tenant: the requested one, listed or not, unless multitenant auth
        // is disabled.
        let none = TenantPolicy::new(None, vec!["x".into()], false).unwrap();
        assert_eq!(none.resolve(None).unwrap(), None);
        assert_eq!(none.resolve(Some("x")).unwrap(), Some("x"));
        assert_eq!(none.resolve(Some("y")).unwrap(), Some("y"));
        assert!(none.resolve_required(None).is_err());
        let none_unlisted = TenantPolicy::new(None, vec![], false).unwrap();
        assert_eq!(none_unlisted.resolve(Some("y")).unwrap(), Some("y"));
        let none_disabled = TenantPolicy::new(None, vec![], true).unwrap();
        assert_eq!(none_disabled.resolve(Some("y")).unwrap(), None);

        // Per-request tenants are validated too.
        assert!(
            any.resolve(Some("evil/../x"))
                .unwrap_err()
                .contains("only ASCII letters")
        );
        assert!(TenantPolicy::new(Some("bad tenant"), vec![], false).is_err());
        assert!(TenantPolicy::new(Some("ok"), vec!["bad/one".into()], false).is_err());
    }
}
