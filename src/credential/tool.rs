//! The shape both command-line tool credentials share (`AzureCliCredential`,
//! `AzureDeveloperCliCredential`): the credential around an `Inner` holding the program, the
//! tenant rules, the timeout and the token cache, and a builder for those.

use std::time::Duration;

/// How long a tool may take by default (it may refresh its own tokens over the network).
pub(crate) const DEFAULT_PROCESS_TIMEOUT: Duration = Duration::from_secs(10);

/// Defines `$credential`, its `Inner`, `new`, `builder`, `Default`, `Debug`, and
/// `$builder` with `tenant_id`, `process_timeout`, `program` and `build`. The calling module
/// provides `NAME`, `DEFAULT_PROGRAM` and `impl Inner { async fn get_token(..) }`.
macro_rules! tool_credential {
    (
        $(#[$doc:meta])*
        $credential:ident, $builder:ident, tool = $tool:literal, tenant_flag = $flag:literal
    ) => {
        $(#[$doc])*
        #[derive(Clone)]
        pub struct $credential {
            inner: std::sync::Arc<Inner>,
        }

        struct Inner {
            program: std::path::PathBuf,
            tenants: $crate::entra::authority::TenantPolicy,
            timeout: std::time::Duration,
            cache: $crate::cache::TokenCache,
        }

        impl $credential {
            #[doc = concat!("`", $tool, "` from `PATH`, its default tenant, a 10 s timeout.")]
            #[allow(
                clippy::expect_used,
                reason = "the default settings have no tenant, the only thing build() validates"
            )]
            pub fn new() -> Self {
                Self::builder()
                    .build()
                    .expect("the default settings have no tenant to validate")
            }

            #[doc = concat!("A builder for the tenant, the timeout and the `", $tool, "` program.")]
            pub fn builder() -> $builder {
                $builder {
                    program: std::path::PathBuf::from(DEFAULT_PROGRAM),
                    tenant_id: None,
                    settings: $crate::credential::settings::Settings::default(),
                    timeout: $crate::credential::tool::DEFAULT_PROCESS_TIMEOUT,
                }
            }
        }

        impl Default for $credential {
            fn default() -> Self {
                Self::new()
            }
        }

        $crate::credential::arc_credential_service!($credential);

        impl std::fmt::Debug for $credential {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(NAME)
                    .field("program", &self.inner.program)
                    .field("tenant_id", &self.inner.tenants.tenant())
                    .field("timeout", &self.inner.timeout)
                    .finish()
            }
        }

        #[doc = concat!("Settings for an [`", stringify!($credential), "`].")]
        #[derive(Debug)]
        pub struct $builder {
            program: std::path::PathBuf,
            tenant_id: Option<String>,
            settings: $crate::credential::settings::Settings,
            timeout: std::time::Duration,
        }

        $crate::credential::settings::settings_setters!($builder {
            additionally_allowed_tenants,
            disable_multitenant_auth,
        });

        impl $builder {
            #[doc = concat!("Ask `", $tool, "` for tokens from this tenant (`", $flag, "`). Default: `", $tool, "`'s own.")]
            pub fn tenant_id(mut self, tenant: impl Into<String>) -> Self {
                self.tenant_id = Some(tenant.into());
                self
            }

            #[doc = concat!("How long `", $tool, "` may take (default 10 s); it is killed after that, with every process it started (on Unix).")]
            pub fn process_timeout(mut self, timeout: std::time::Duration) -> Self {
                self.timeout = timeout;
                self
            }

            #[doc = concat!("The `", $tool, "` executable to run (default `", $tool, "` from `PATH`).")]
            pub fn program(mut self, program: impl Into<std::path::PathBuf>) -> Self {
                self.program = program.into();
                self
            }

            /// Validates the tenant ids and builds.
            pub fn build(self) -> Result<$credential, $crate::ConfigError> {
                let tenants = self.settings.tenants(NAME, self.tenant_id.as_deref())?;
                Ok($credential {
                    inner: std::sync::Arc::new(Inner {
                        program: self.program,
                        tenants,
                        timeout: self.timeout,
                        cache: $crate::cache::TokenCache::new(NAME),
                    }),
                })
            }
        }
    };
}
pub(crate) use tool_credential;
