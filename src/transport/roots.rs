//! [`Roots`]: which root certificates the default client trusts, and the store built from them.
//!
//! The platform's store is read with `rustls-native-certs`, not `rustls-platform-verifier`:
//! it yields certificates, so they go into the one `RootCertStore` with the bundled roots and
//! the extra PEM roots, verified by the same webpki verifier with the same errors and hints.
//! The platform verifier replaces the verifier instead; it takes extra roots but cannot also
//! take the bundled ones, and on Linux it is webpki over the very files read here
//! (`SSL_CERT_FILE`/`SSL_CERT_DIR`, then the distribution's bundle), so it would add nothing
//! there but a second trust path.

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls_native_certs::CertificateResult;

use crate::error::ConfigError;

/// Which root certificates the default [`HttpClient`](crate::HttpClient) trusts, besides the
/// ones added with
/// [`add_root_certificates_pem`](crate::HttpClientBuilder::add_root_certificates_pem).
///
/// A TLS-inspecting corporate proxy re-signs every server's certificate with its own CA,
/// which IT installs into the operating system's store: choose [`Roots::Platform`] or
/// [`Roots::BundledAndPlatform`] to trust it.
///
/// ```no_run
/// use tower_identity::{HttpClient, Roots};
///
/// # fn run() -> Result<(), tower_identity::ConfigError> {
/// let http = HttpClient::builder()
///     .roots(Roots::BundledAndPlatform)
///     .build()?;
/// # let _ = http; Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Roots {
    /// Mozilla's roots compiled into the crate (`webpki-roots`): the same on every machine,
    /// blind to CAs installed locally. The default.
    #[default]
    Bundled,
    /// The platform's store, read once when the client is built: on Linux and other Unix
    /// systems the PEM file in `SSL_CERT_FILE` and the directories in `SSL_CERT_DIR` when
    /// either is set, otherwise the distribution's CA bundle (`ca-certificates`); the
    /// keychains on macOS; the system store on Windows.
    Platform,
    /// The bundled roots and the platform's store together.
    BundledAndPlatform,
}

impl Roots {
    fn bundled(self) -> bool {
        matches!(self, Self::Bundled | Self::BundledAndPlatform)
    }

    fn platform(self) -> bool {
        matches!(self, Self::Platform | Self::BundledAndPlatform)
    }
}

/// Mozilla's roots, as compiled in.
pub(super) fn bundled() -> RootCertStore {
    RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    }
}

/// The store `roots` and the extra PEM texts make, reading the platform's store if asked.
pub(super) fn root_store(
    roots: Roots,
    extra_pem: &[Vec<u8>],
) -> Result<RootCertStore, ConfigError> {
    root_store_with(roots, extra_pem, rustls_native_certs::load_native_certs)
}

/// [`root_store`] with the platform's store read by `load_platform` (tests hand it files).
fn root_store_with(
    roots: Roots,
    extra_pem: &[Vec<u8>],
    load_platform: impl FnOnce() -> CertificateResult,
) -> Result<RootCertStore, ConfigError> {
    let mut store = if roots.bundled() {
        bundled()
    } else {
        RootCertStore::empty()
    };
    let platform_problems = if roots.platform() {
        add_platform(&mut store, load_platform())
    } else {
        Vec::new()
    };
    for pem in extra_pem {
        add_pem(&mut store, pem)?;
    }
    if store.is_empty() {
        // Only `Roots::Platform` without extra roots gets here: every connection would fail
        // with an unknown issuer, so say now what is missing.
        let mut message = String::from(
            "Roots::Platform found no usable root certificate in the platform's store (on Linux: \
             SSL_CERT_FILE and SSL_CERT_DIR when set, otherwise the distribution's CA bundle); \
             install the CA certificates (Debian, Ubuntu: apt-get install ca-certificates), \
             point SSL_CERT_FILE at a PEM bundle, add roots with add_root_certificates_pem, or \
             use Roots::BundledAndPlatform",
        );
        if !platform_problems.is_empty() {
            message.push_str(&format!(
                " (reading the store: {})",
                platform_problems.join("; ")
            ));
        }
        return Err(ConfigError::new(message));
    }
    Ok(store)
}

/// Adds what the platform's store yielded; returns what went wrong, which has been logged.
///
/// A store that is partly unreadable (one file denied, one malformed) still trusts what was
/// read, as OpenSSL would: only a store left empty fails the build, in [`root_store_with`].
fn add_platform(store: &mut RootCertStore, loaded: CertificateResult) -> Vec<String> {
    let mut problems: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
    for problem in &problems {
        tracing::warn!(%problem, "platform root certificates: part of the store was not read");
    }
    let found = loaded.certs.len();
    // Distribution bundles carry certificates webpki cannot parse (old or unusual encodings);
    // skipping them is what every rustls user of these stores does.
    let (added, skipped) = store.add_parsable_certificates(loaded.certs);
    tracing::debug!(found, added, skipped, "platform root certificates loaded");
    if skipped > 0 {
        problems.push(format!(
            "{skipped} of {found} certificates could not be parsed"
        ));
    }
    if found == 0 {
        tracing::warn!("platform root certificates: the store holds none");
    }
    problems
}

/// Adds the certificates of one PEM text; fails if it has none or one is invalid.
fn add_pem(store: &mut RootCertStore, pem: &[u8]) -> Result<(), ConfigError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigError::new("root certificate PEM could not be parsed").with_source(e))?;
    if certs.is_empty() {
        return Err(ConfigError::new(
            "root certificate PEM holds no \"-----BEGIN CERTIFICATE-----\" block",
        ));
    }
    for cert in certs {
        store
            .add(cert)
            .map_err(|e| ConfigError::new("a root certificate was rejected").with_source(e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use rustls_native_certs::load_certs_from_paths;

    use super::*;

    fn ca_pem() -> String {
        let mut params = rcgen::CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().pem()
    }

    /// A platform store read from one file, as `SSL_CERT_FILE` would name it.
    fn from_file(path: &Path) -> impl FnOnce() -> CertificateResult + '_ {
        move || load_certs_from_paths(Some(path), None)
    }

    fn never() -> CertificateResult {
        panic!("the platform's store was read though not asked for")
    }

    #[test]
    fn bundled_is_the_default_and_never_reads_the_platform_store() {
        assert_eq!(Roots::default(), Roots::Bundled);
        let store = root_store_with(Roots::Bundled, &[], never).unwrap();
        assert_eq!(store.len(), webpki_roots::TLS_SERVER_ROOTS.len());
        let store = root_store_with(Roots::Bundled, &[ca_pem().into_bytes()], never).unwrap();
        assert_eq!(store.len(), webpki_roots::TLS_SERVER_ROOTS.len() + 1);
    }

    #[test]
    fn platform_roots_alone_or_with_the_bundled_and_extra_ones() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ca.pem");
        std::fs::write(&file, format!("{}{}", ca_pem(), ca_pem())).unwrap();
        let bundled = webpki_roots::TLS_SERVER_ROOTS.len();

        let store = root_store_with(Roots::Platform, &[], from_file(&file)).unwrap();
        assert_eq!(store.len(), 2);
        let store = root_store_with(Roots::BundledAndPlatform, &[], from_file(&file)).unwrap();
        assert_eq!(store.len(), bundled + 2);
        let extra = [ca_pem().into_bytes()];
        let store = root_store_with(Roots::BundledAndPlatform, &extra, from_file(&file)).unwrap();
        assert_eq!(store.len(), bundled + 3);
    }

    #[test]
    fn an_empty_platform_store_fails_only_when_nothing_else_is_trusted() {
        let err = root_store_with(Roots::Platform, &[], CertificateResult::default).unwrap_err();
        assert!(
            err.message().contains("no usable root certificate"),
            "{err}"
        );
        assert!(err.message().contains("SSL_CERT_FILE"), "{err}");
        assert!(!err.message().contains("reading the store"), "{err}");

        let store =
            root_store_with(Roots::BundledAndPlatform, &[], CertificateResult::default).unwrap();
        assert_eq!(store.len(), webpki_roots::TLS_SERVER_ROOTS.len());
        let extra = [ca_pem().into_bytes()];
        let store = root_store_with(Roots::Platform, &extra, CertificateResult::default).unwrap();
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn what_could_not_be_read_is_named_when_nothing_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = root_store_with(Roots::Platform, &[], from_file(&missing)).unwrap_err();
        assert!(err.message().contains("reading the store"), "{err}");
        assert!(
            err.message().contains(&missing.display().to_string()),
            "{err}"
        );

        // A CERTIFICATE block whose content is no certificate: skipped, and said so.
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nAAECAwQF\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = root_store_with(Roots::Platform, &[], from_file(&garbage)).unwrap_err();
        assert!(
            err.message()
                .contains("1 of 1 certificates could not be parsed"),
            "{err}"
        );
    }

    #[test]
    fn a_partly_unreadable_platform_store_keeps_what_it_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ca.pem");
        std::fs::write(&file, ca_pem()).unwrap();
        let missing = dir.path().join("no-such-dir");
        let store = root_store_with(Roots::Platform, &[], || {
            load_certs_from_paths(Some(&file), Some(&missing))
        })
        .unwrap();
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn extra_pem_errors_still_fail_the_build() {
        let err = root_store_with(Roots::Platform, &[b"not a pem".to_vec()], || {
            load_certs_from_paths(None, None)
        })
        .unwrap_err();
        assert!(
            err.message().contains("no \"-----BEGIN CERTIFICATE-----\""),
            "{err}"
        );
    }
}
