//! What both command-line tool credentials share (`AzureCliCredential`,
//! `AzureDeveloperCliCredential`): the settings their builders collect ([`ToolSettings`]) and
//! what the credential runs with ([`Inner`]). Each credential's module writes its public types
//! and setters as thin wrappers over these, and the `get_token` that runs its tool.

use std::fmt;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::time::Duration;

use super::settings::Settings;
use crate::cache::TokenCache;
use crate::entra::authority::TenantPolicy;
use crate::error::ConfigError;

/// How long a tool may take by default (it may refresh its own tokens over the network).
const DEFAULT_PROCESS_TIMEOUT: Duration = Duration::from_secs(10);

/// What a tool credential runs with. `C` is the credential type: each credential implements
/// its own `get_token` on its `Inner<C>`.
pub(super) struct Inner<C> {
    name: &'static str,
    pub(super) program: PathBuf,
    pub(super) tenants: TenantPolicy,
    pub(super) timeout: Duration,
    pub(super) cache: TokenCache,
    /// Azure CLI's check of `az` on a claims challenge (see `azure_cli`); unused by azd.
    pub(super) claims_check: super::azure_cli::ClaimsCheck,
    credential: PhantomData<fn() -> C>,
}

impl<C> Inner<C> {
    /// The tool from `PATH`, its default tenant, the default timeout.
    #[allow(
        clippy::expect_used,
        reason = "the default settings have no tenant, the only thing build() validates"
    )]
    pub(super) fn with_defaults(name: &'static str, default_program: &str) -> Self {
        ToolSettings::new(name, default_program)
            .build()
            .expect("the default settings have no tenant to validate")
    }
}

impl<C> fmt::Debug for Inner<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(self.name)
            .field("program", &self.program)
            .field("tenant_id", &self.tenants.tenant())
            .field("multitenant_disabled", &self.tenants.multitenant_disabled())
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// What a tool credential's builder collects.
pub(super) struct ToolSettings {
    name: &'static str,
    program: PathBuf,
    tenant_id: Option<String>,
    /// Only the tenant rules apply: a tool has its own authority, HTTP client and cache.
    pub(super) settings: Settings,
    timeout: Duration,
}

impl ToolSettings {
    pub(super) fn new(name: &'static str, default_program: &str) -> Self {
        Self {
            name,
            program: PathBuf::from(default_program),
            tenant_id: None,
            settings: Settings::default(),
            timeout: DEFAULT_PROCESS_TIMEOUT,
        }
    }

    pub(super) fn set_tenant_id(&mut self, tenant: String) {
        self.tenant_id = Some(tenant);
    }

    pub(super) fn set_process_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    pub(super) fn set_program(&mut self, program: PathBuf) {
        self.program = program;
    }

    /// Validates the tenant ids.
    pub(super) fn build<C>(self) -> Result<Inner<C>, ConfigError> {
        let tenants = self
            .settings
            .tenants(self.name, self.tenant_id.as_deref())?;
        Ok(Inner {
            name: self.name,
            program: self.program,
            tenants,
            timeout: self.timeout,
            cache: TokenCache::new(self.name),
            claims_check: Default::default(),
            credential: PhantomData,
        })
    }

    /// The builder's `Debug`, under the builder's name.
    pub(super) fn debug(&self, builder: &str, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(builder)
            .field("program", &self.program)
            .field("tenant_id", &self.tenant_id)
            .field("settings", &self.settings)
            .field("timeout", &self.timeout)
            .finish()
    }
}
