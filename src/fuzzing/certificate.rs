//! Certificate loading and assertion signing.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::token::{Secret, unix_now};

/// The longest load error: messages name what was wrong and quote no input.
const CERTIFICATE_ERROR_MAX_CHARS: usize = 600;

/// Certificate loading. Layout: byte 0 even = the rest is PEM text (given the password `fuzz`
/// for an `ENCRYPTED PRIVATE KEY` when byte 0 is 2 modulo 4); odd = byte 1 is a password
/// length `n`, the next `n` bytes the password (lossy UTF-8), the rest a PKCS#12 archive.
///
/// Checks: an error is one line of at most `CERTIFICATE_ERROR_MAX_CHARS` characters with no
/// PEM armour and no base64 run from the input; a loaded certificate has a leaf, and signs an
/// assertion of three base64url parts. PKCS#12 bytes also go straight through the count of
/// their key derivations (`pkcs12_work`, which `load` runs first): an archive it passes is
/// within every limit.
pub fn certificate(data: &[u8]) {
    use crate::credential::certificate::CertificateSource;
    use crate::credential::certificate::jwt::{CertificateSignature, Signer};
    use crate::credential::certificate::pkcs12_work::{
        self, MAX_ITERATIONS_PER_RUN, MAX_KDF_RUNS, MAX_SCRYPT_MEMORY_BYTES, MAX_TOTAL_ITERATIONS,
    };

    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let source = if kind % 4 == 2 {
        CertificateSource::from_pem_with_password(rest.to_vec(), Some(Secret::new("fuzz")))
    } else if kind % 2 == 0 {
        CertificateSource::from_pem(rest.to_vec())
    } else {
        let Some((&n, rest)) = rest.split_first() else {
            return;
        };
        let n = usize::from(n).min(rest.len());
        let password = String::from_utf8_lossy(&rest[..n]).into_owned();
        if let Ok(work) = pkcs12_work::check(&rest[n..]) {
            assert!(
                work.scrypt_invalid_cost.is_none()
                    && work.runs <= MAX_KDF_RUNS
                    && work.largest_run <= MAX_ITERATIONS_PER_RUN
                    && work.largest_scrypt_memory <= MAX_SCRYPT_MEMORY_BYTES
                    && work.iterations <= MAX_TOTAL_ITERATIONS,
                "{work:?}"
            );
        }
        CertificateSource::from_pkcs12(rest[n..].to_vec(), Some(Secret::new(password)))
    };
    match source.load(unix_now()) {
        Ok(loaded) => {
            assert!(!loaded.leaf().is_empty());
            let signer = Signer::new(loaded, Some(CertificateSignature::Ps256), true);
            let jwt = signer
                .sign(
                    "t",
                    "https://login.test/t/oauth2/v2.0/token",
                    "client",
                    unix_now(),
                )
                .expect("a loaded key signs");
            let parts: Vec<&str> = jwt.split('.').collect();
            assert_eq!(parts.len(), 3, "{jwt}");
            for part in parts {
                URL_SAFE_NO_PAD.decode(part).expect("base64url part");
            }
        }
        Err(message) => {
            assert!(
                message.chars().count() <= CERTIFICATE_ERROR_MAX_CHARS,
                "{message}"
            );
            assert!(!message.contains('\n'), "{message}");
            assert!(!message.contains("-----"), "{message}");
            // No run of 24+ input characters (a quoted key or certificate line). The names the
            // advice gives (`AZURE_CLIENT_CERTIFICATE_PASSWORD`,
            // `CertificateSource::from_path`) are the message's own, even when the input
            // happens to hold them; a PEM line (standard base64) never has `_` or `::`.
            let text = String::from_utf8_lossy(data);
            for word in message.split(|c: char| c.is_whitespace() || c == '(' || c == ')') {
                if word.len() >= 24 && !names_an_item(word) {
                    assert!(!text.contains(word), "quotes input: {word} in {message}");
                }
            }
        }
    }
}

/// Whether `word` (trimmed of punctuation) is an identifier or a path of them with `_` or `::`
/// in it: an environment variable or an API item an error names.
fn names_an_item(word: &str) -> bool {
    let word = word.trim_matches(|c: char| matches!(c, '`' | ',' | '.' | ':' | ';'));
    (word.contains('_') || word.contains("::"))
        && word.split("::").all(|part| {
            !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}
