//! The environment variables credentials read, and where they are read from: the process
//! environment, or the pairs a builder was given with `vars(…)` instead (tests,
//! configuration that comes from elsewhere). Each builder with a `vars` setter has it from
//! `settings::vars_setters`, storing `Vars::from_pairs`, and a `vars_as_set` taking a `Vars`
//! as it is: a chain hands its own on that way, values not Unicode kept.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
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

/// Where variables come from. Values as the OS gives them: one that is not Unicode is set,
/// not unset (a path may be any bytes; a URL that is not text is a mistake to report).
#[derive(Clone, Default)]
pub(crate) struct Vars(Option<Arc<HashMap<String, OsString>>>);

impl Vars {
    /// These pairs instead of the process environment.
    pub(crate) fn from_pairs<I, K, V>(vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Self::from_os_pairs(vars.into_iter().map(|(k, v)| (k, OsString::from(v.into()))))
    }

    /// Pairs whose values need not be Unicode (tests: the public `vars` setters take text).
    pub(crate) fn from_os_pairs<I, K>(vars: I) -> Self
    where
        I: IntoIterator<Item = (K, OsString)>,
        K: Into<String>,
    {
        Self(Some(Arc::new(
            vars.into_iter().map(|(k, v)| (k.into(), v)).collect(),
        )))
    }

    /// The variable's value as set.
    fn raw(&self, name: &str) -> Option<OsString> {
        match &self.0 {
            Some(vars) => vars.get(name).cloned(),
            None => std::env::var_os(name),
        }
    }

    /// Whether the variable is set to anything non-empty (a flag such as
    /// `AZURE_IDENTITY_DISABLE_MULTITENANTAUTH`: any value turns it on, as in azure-identity).
    pub(crate) fn is_set(&self, name: &str) -> bool {
        self.raw(name).is_some_and(|v| !v.is_empty())
    }

    /// Whether `AZURE_IDENTITY_DISABLE_MULTITENANTAUTH` turns per-request tenants off.
    pub(crate) fn multitenant_disabled(&self) -> bool {
        self.is_set(AZURE_IDENTITY_DISABLE_MULTITENANTAUTH)
    }

    /// The variable's value, trimmed; `None` when it is unset, blank or not Unicode.
    pub(crate) fn get(&self, name: &str) -> Option<String> {
        self.text(name).ok().flatten()
    }

    /// The variable's value, trimmed; `Ok(None)` when it is unset or blank, an error naming
    /// it when it is not Unicode (for a value that must be text, such as a URL, and would be
    /// replaced by a default if taken as unset).
    pub(crate) fn text(&self, name: &str) -> Result<Option<String>, String> {
        match self.raw(name).map(OsString::into_string) {
            None => Ok(None),
            Some(Ok(value)) => Ok(Some(value.trim().to_owned()).filter(|v| !v.is_empty())),
            Some(Err(_)) => Err(format!(
                "{name} is set to a value that is not valid Unicode"
            )),
        }
    }

    /// A path's value: trimmed when it is Unicode, else as set (a path need not be Unicode);
    /// `None` when it is unset or blank.
    pub(crate) fn get_path(&self, name: &str) -> Option<PathBuf> {
        let path = match self.raw(name)?.into_string() {
            Ok(text) => PathBuf::from(text.trim()),
            Err(bytes) => PathBuf::from(bytes),
        };
        Some(path).filter(|p| !p.as_os_str().is_empty())
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
        let value = self.raw(name)?.into_string().ok();
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

/// A value that is not Unicode: `prefix` and a byte (Unix) or an unpaired surrogate (Windows)
/// no text has.
#[cfg(test)]
pub(crate) fn not_unicode(prefix: &str) -> OsString {
    #[cfg(unix)]
    let value = {
        use std::os::unix::ffi::OsStringExt;
        let mut bytes = prefix.as_bytes().to_vec();
        bytes.push(0xff);
        OsString::from_vec(bytes)
    };
    #[cfg(windows)]
    let value = {
        use std::os::windows::ffi::OsStringExt;
        let mut wide: Vec<u16> = prefix.encode_utf16().collect();
        wide.push(0xd800);
        OsString::from_wide(&wide)
    };
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A value that is not Unicode is set, not unset: a path keeps it (as set), text that
    /// must be Unicode says so naming the variable; `get` still reads it as unset.
    #[test]
    fn a_value_that_is_not_unicode_is_set_not_unset() {
        let odd = not_unicode("/var/run/t\u{f6}ken-");
        let vars = Vars::from_os_pairs([("P", odd.clone()), ("U", " https://x.test ".into())]);
        assert_eq!(vars.get_path("P"), Some(PathBuf::from(&odd)));
        assert!(vars.is_set("P"));
        assert_eq!(vars.get("P"), None);
        let err = vars.text("P").unwrap_err();
        assert!(
            err.contains("P is set") && err.contains("not valid Unicode"),
            "{err}"
        );
        assert_eq!(vars.text("U").unwrap().as_deref(), Some("https://x.test"));
        assert_eq!(vars.get_path("U"), Some(PathBuf::from("https://x.test")));
        assert_eq!(vars.text("unset").unwrap(), None);
        assert_eq!(vars.get_path("unset"), None);
        let blank = Vars::from_pairs([("P", "  ")]);
        assert_eq!(
            (blank.get_path("P"), blank.text("P").unwrap()),
            (None, None)
        );
    }

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
