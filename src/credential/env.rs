//! The environment variables credentials read, and where they are read from: the process
//! environment, or the pairs a builder was given with `vars(…)` instead (tests,
//! configuration that comes from elsewhere). Each builder with a `vars` setter writes it out
//! with the same doc text, storing `Vars::from_pairs`.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::entra::authority::AZURE_IDENTITY_DISABLE_MULTITENANTAUTH;

/// The tenant (directory) id of a service principal or workload identity.
pub(crate) const AZURE_TENANT_ID: &str = "AZURE_TENANT_ID";
/// The client (application) id; also a user-assigned managed identity's, as in azure-identity.
pub(crate) const AZURE_CLIENT_ID: &str = "AZURE_CLIENT_ID";
/// A user's sign-in name: the account `DefaultAzureCredential`'s shared token cache picks, as
/// in azure-identity (`EnvironmentCredential` reads it too, to refuse username/password).
pub(crate) const AZURE_USERNAME: &str = "AZURE_USERNAME";

/// Tenants besides the configured one that requests may name, separated by `;` (`*`: any), as
/// the .NET, Go, JavaScript and Java azure-identity libraries read it (Python's does not).
pub(crate) const AZURE_ADDITIONALLY_ALLOWED_TENANTS: &str = "AZURE_ADDITIONALLY_ALLOWED_TENANTS";

/// Where variables come from.
#[derive(Clone, Default)]
pub(crate) struct Vars(Option<Arc<HashMap<String, String>>>);

impl Vars {
    /// These pairs instead of the process environment.
    pub(crate) fn from_pairs<I, K, V>(vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Self(Some(Arc::new(
            vars.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )))
    }

    /// The pairs given instead of the process environment, to hand to another builder's
    /// `vars`; `None` for the process environment.
    pub(crate) fn pairs(&self) -> Option<Vec<(String, String)>> {
        self.0
            .as_ref()
            .map(|vars| vars.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }

    /// Whether the variable is set to anything non-empty (a flag such as
    /// `AZURE_IDENTITY_DISABLE_MULTITENANTAUTH`: any value turns it on, as in azure-identity).
    pub(crate) fn is_set(&self, name: &str) -> bool {
        match &self.0 {
            Some(vars) => vars.get(name).is_some_and(|v| !v.is_empty()),
            None => std::env::var_os(name).is_some_and(|v| !v.is_empty()),
        }
    }

    /// Whether `AZURE_IDENTITY_DISABLE_MULTITENANTAUTH` turns per-request tenants off.
    pub(crate) fn multitenant_disabled(&self) -> bool {
        self.is_set(AZURE_IDENTITY_DISABLE_MULTITENANTAUTH)
    }

    /// The variable's value, trimmed; `None` when it is unset, blank or not Unicode.
    pub(crate) fn get(&self, name: &str) -> Option<String> {
        let value = match &self.0 {
            Some(vars) => vars.get(name).cloned(),
            None => std::env::var(name).ok(),
        };
        value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
    }

    /// The tenants of `AZURE_ADDITIONALLY_ALLOWED_TENANTS`, each trimmed, blanks left out
    /// (a trailing `;`); not validated.
    pub(crate) fn additionally_allowed_tenants(&self) -> Vec<String> {
        self.get(AZURE_ADDITIONALLY_ALLOWED_TENANTS)
            .map(|list| {
                list.split(';')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A secret's value exactly as set (a client secret or password may begin or end with a
    /// space, as azure-identity passes it on); `None` when it is unset, blank or not Unicode.
    pub(crate) fn get_secret(&self, name: &str) -> Option<String> {
        let value = match &self.0 {
            Some(vars) => vars.get(name).cloned(),
            None => std::env::var(name).ok(),
        };
        value.filter(|v| !v.trim().is_empty())
    }
}

/// Names only: values may be secrets.
impl fmt::Debug for Vars {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            None => f.write_str("process environment"),
            Some(vars) => {
                let mut names: Vec<&String> = vars.keys().collect();
                names.sort_unstable();
                f.debug_list().entries(names).finish()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_trimmed_blank_is_unset_and_debug_shows_names_only() {
        let vars = Vars::from_pairs([("A", " a "), ("B", "  "), ("SECRET", "hunter2-value")]);
        assert_eq!(vars.get("A").as_deref(), Some("a"));
        assert_eq!(vars.get("B"), None);
        assert_eq!(vars.get("C"), None);
        assert_eq!(vars.get_secret("A").as_deref(), Some(" a "));
        assert_eq!(vars.get_secret("B"), None);
        assert_eq!(vars.get_secret("C"), None);
        let text = format!("{vars:?}");
        assert!(
            Vars::from_pairs([("A", "a")])
                .additionally_allowed_tenants()
                .is_empty()
        );
        let vars = Vars::from_pairs([(AZURE_ADDITIONALLY_ALLOWED_TENANTS, " a ;; b;* ; ")]);
        assert_eq!(vars.additionally_allowed_tenants(), ["a", "b", "*"]);
        assert!(
            text.contains("SECRET") && !text.contains("hunter2"),
            "{text}"
        );
    }
}
