//! The walk over archives written by `build` (the load of real OpenSSL exports is in
//! `certificate/tests.rs`).

use der::Encode as _;

use super::build::{Archive, Bag, Content, Kdf, pfx, seq};
use super::*;

fn check_built(archive: &Archive) -> Result<Work, String> {
    let der = archive.der();
    assert_eq!(measure(&der).unwrap(), archive.work(), "{archive:?}");
    check(&der)
}

#[test]
fn real_export_layouts_are_counted_and_pass() {
    let openssl = check_built(&Archive::openssl_default()).unwrap();
    assert_eq!((openssl.runs, openssl.iterations), (3, 3 * 2048));
    // OpenSSL -legacy and Windows/.NET: PBES1 (3DES), MAC at 2000 to 2048.
    let legacy = Archive {
        mac: Some(2000),
        contents: vec![
            Content::Encrypted(Kdf::Pkcs12Pbe(2000)),
            Content::Data(vec![Bag::Shrouded(Kdf::Pkcs12Pbe(2000))]),
        ],
    };
    assert_eq!(check_built(&legacy).unwrap().runs, 3);
    // Java keytool before JDK-8153005: 50 000 for the items, 100 000 for the MAC.
    let java = Archive {
        mac: Some(100_000),
        contents: vec![
            Content::Data(vec![Bag::Shrouded(Kdf::Pkcs12Pbe(50_000))]),
            Content::Encrypted(Kdf::Pkcs12Pbe(50_000)),
        ],
    };
    assert_eq!(check_built(&java).unwrap().iterations, 200_000);
    // The usual three items at p12-keystore's own cap each.
    let at_cap = Archive {
        mac: Some(MAX_ITERATIONS_PER_RUN),
        contents: vec![
            Content::Encrypted(Kdf::Pbkdf2(MAX_ITERATIONS_PER_RUN)),
            Content::Data(vec![
                Bag::Cert,
                Bag::Shrouded(Kdf::Pbkdf2(MAX_ITERATIONS_PER_RUN)),
            ]),
        ],
    };
    assert_eq!(check_built(&at_cap).unwrap().iterations, 3_000_000);
    // No password: no MAC, plain bags.
    let plain = Archive {
        mac: None,
        contents: vec![Content::Data(vec![Bag::Cert, Bag::Key])],
    };
    assert_eq!(check_built(&plain).unwrap(), Work::default());
}

#[test]
fn many_encrypted_items_are_refused_naming_the_count_and_the_fix() {
    let mut archive = Archive::openssl_default();
    archive
        .contents
        .extend((0..40).map(|_| Content::Encrypted(Kdf::Pbkdf2(2048))));
    let err = check_built(&archive).unwrap_err();
    assert!(
        err.starts_with(
            "the PKCS#12 archive needs 43 password key derivations (88064 iterations in all), \
             more than the limit of 16"
        ),
        "{err}"
    );
    assert!(err.contains("openssl pkcs12 -export -iter 2048"), "{err}");
    // Shrouded keys and secret bags count the same.
    let bags = vec![Bag::Secret(Kdf::Pkcs12Pbe(1)); 20];
    let archive = Archive {
        mac: None,
        contents: vec![Content::Data(bags)],
    };
    let err = check_built(&archive).unwrap_err();
    assert!(err.contains("needs 20 password key derivations"), "{err}");
}

#[test]
fn too_many_iterations_in_all_or_for_one_item_are_refused() {
    let archive = Archive {
        mac: Some(MAX_ITERATIONS_PER_RUN),
        contents: vec![Content::Data(vec![
            Bag::Shrouded(Kdf::Pbkdf2(
                MAX_ITERATIONS_PER_RUN
            ));
            4
        ])],
    };
    let err = check_built(&archive).unwrap_err();
    assert!(
        err.starts_with(
            "the PKCS#12 archive needs 5 password key derivations of 5000000 iterations in all, \
             more than the limit of 4000000 iterations"
        ),
        "{err}"
    );
    let archive = Archive {
        mac: Some(MAX_ITERATIONS_PER_RUN + 1),
        contents: Vec::new(),
    };
    let err = check_built(&archive).unwrap_err();
    assert!(
        err.starts_with(
            "an item of the PKCS#12 archive asks for 1000001 key-derivation iterations, more \
             than the limit of 1000000 for one item"
        ),
        "{err}"
    );
}

#[test]
fn scrypt_counts_n_r_p_and_its_memory_is_bounded() {
    let archive = Archive {
        mac: None,
        contents: vec![Content::Encrypted(Kdf::Scrypt(1 << 14, 8, 1))],
    };
    assert_eq!(check_built(&archive).unwrap().iterations, 1 << 17);
    let archive = Archive {
        mac: None,
        contents: vec![Content::Encrypted(Kdf::Scrypt(1 << 20, 8, 1))],
    };
    let err = check_built(&archive).unwrap_err();
    // N·r·p = 2^23 is over the per-item cap, which is checked first.
    assert!(
        err.contains("asks for 8388608 key-derivation iterations"),
        "{err}"
    );
}

#[test]
fn scrypt_memory_over_the_limit_is_refused() {
    // 128·r·(N + p) = 75.07 MiB with N·r·p under the per-item cap (rounded up).
    let archive = Archive {
        mac: None,
        contents: vec![Content::Encrypted(Kdf::Scrypt(1 << 10, 600, 1))],
    };
    let err = check_built(&archive).unwrap_err();
    assert!(
        err.starts_with(
            "an item of the PKCS#12 archive is encrypted with scrypt needing 76 MiB of memory, \
             more than the limit of 65 MiB"
        ),
        "{err}"
    );
}

/// scrypt's p lanes (128·r·p bytes) count as memory beside ROMix's table (128·r·N): with N
/// small, p can be large within the iteration cap (N·r·p), and N below 2 is refused.
#[test]
fn scrypt_memory_counts_the_lanes_and_a_cost_below_two_is_refused() {
    let run = |kdf: Kdf| {
        check_built(&Archive {
            mac: None,
            contents: vec![Content::Encrypted(kdf)],
        })
    };
    // N·r·p = 983 025 and 128·N·r = 1920 bytes, but the lanes alone are 120 MiB.
    let err = run(Kdf::Scrypt(1, 15, 65_535)).unwrap_err();
    assert!(
        err.starts_with(
            "an item of the PKCS#12 archive is encrypted with scrypt at a cost (N) of 1, which \
             is invalid (N must be a power of two, at least 2)"
        ),
        "{err}"
    );
    // N = 2: N·r·p = 1 000 000, table 6 MiB, lanes 61 MiB: 67.14 MiB in all.
    let err = run(Kdf::Scrypt(2, 25_000, 20)).unwrap_err();
    assert!(
        err.starts_with(
            "an item of the PKCS#12 archive is encrypted with scrypt needing 68 MiB of memory, \
             more than the limit of 65 MiB"
        ),
        "{err}"
    );
    // N = 2^16, r = 8, p = 1: a 64 MiB table and 1 KiB of lanes, within the limit.
    assert!(run(Kdf::Scrypt(1 << 16, 8, 1)).is_ok());
    // Overflowing parameters are over the limit, not wrapped below it.
    let err = run(Kdf::Scrypt(2, u64::MAX / 64, 1)).unwrap_err();
    assert!(err.contains("key-derivation iterations"), "{err}");
    let huge = Run::scrypt(u64::MAX, 1, 1);
    assert_eq!(huge.scrypt_memory, u64::MAX);
    let huge = Run::scrypt(2, u64::MAX / 64, 1);
    assert_eq!(huge.scrypt_memory, u64::MAX);
    // OpenSSL's default (N = 2^14, r = 8, p = 1: 16 MiB) and twice it still pass.
    for n in [1 << 14, 1 << 15] {
        let work = run(Kdf::Scrypt(n, 8, 1)).unwrap();
        assert_eq!(work.largest_scrypt_memory, 128 * 8 * (n + 1), "{n}");
    }
}

#[test]
fn schemes_without_a_password_count_nothing_and_unreadable_ones_count_the_cap() {
    let archive = Archive {
        mac: None,
        contents: vec![
            Content::Encrypted(Kdf::NotPassword),
            Content::Data(vec![Bag::Shrouded(Kdf::NotPassword)]),
        ],
    };
    assert_eq!(check_built(&archive).unwrap().runs, 0);
    let archive = Archive {
        mac: Some(1),
        contents: vec![Content::Data(vec![
            Bag::Shrouded(Kdf::Unreadable),
            Bag::Secret(Kdf::Unreadable),
        ])],
    };
    let work = check_built(&archive).unwrap();
    assert_eq!(
        (work.runs, work.iterations),
        (3, 2 * MAX_ITERATIONS_PER_RUN + 1)
    );
}

#[test]
fn iteration_counts_read_negative_as_zero_and_huge_as_saturated() {
    let run = |count: &[u8]| {
        let count = build::tlv(Tag::Integer, count);
        let params = seq(&[build::tlv(Tag::OctetString, b"salt"), count]);
        let oid = ObjectIdentifier::new_unwrap("1.2.840.113549.1.12.1.3");
        let algorithm = seq(&[oid.to_der().unwrap(), params]);
        encryption_run(AnyRef::from_der(&algorithm).unwrap()).map(|r| r.iterations)
    };
    assert_eq!(run(&[0x80]), Some(0));
    assert_eq!(run(&[0x08, 0x00]), Some(2048));
    assert_eq!(run(&[0x7f; 12]), Some(u64::MAX));
    assert_eq!(
        run(&[]),
        Some(MAX_ITERATIONS_PER_RUN),
        "unreadable: the cap"
    );
}

#[test]
fn malformed_der_is_an_error_never_a_panic() {
    let der = Archive::openssl_default().der();
    // Every truncation and every single-byte change of a valid archive.
    for len in 0..der.len() {
        if let Err(err) = check(&der[..len]) {
            assert!(
                err.starts_with("the PKCS#12 data is not a valid archive: "),
                "{err}"
            );
        }
    }
    for i in 0..der.len() {
        for flip in [0x01, 0x80, 0xff] {
            let mut bad = der.clone();
            bad[i] ^= flip;
            if let Err(err) = check(&bad) {
                assert!(!err.contains('\n') && err.len() < 600, "{err}");
            }
        }
    }
    for (input, want) in [
        (&b""[..], "its outer structure is malformed"),
        (&b"not an archive"[..], "its outer structure is malformed"),
        (&[0x02, 0x01, 0x03][..], "its outer structure is malformed"),
        (
            &[0x30, 0x03, 0x02, 0x01, 0x03][..],
            "its authSafe is malformed",
        ),
        (&[0x30, 0x80, 0x00, 0x00][..], "indefinite"),
    ] {
        let err = check(input).unwrap_err();
        assert!(err.contains(want), "{want}: {err}");
    }
    // An AuthenticatedSafe that is not a SEQUENCE OF ContentInfo.
    let err = check(&pfx(&[seq(&[])], None)).unwrap_err();
    assert!(
        err.contains("AuthenticatedSafe content is malformed"),
        "{err}"
    );
}

#[test]
fn scrypt_with_a_cost_of_zero_is_refused_before_pkcs5_panics_on_it() {
    // pkcs5 0.8.1 computes log2(N) as `64 - N.leading_zeros() - 1`: N = 0 underflows. Found
    // by `certificate_pkcs12_built_archives_are_refused_cleanly` (src/proptests.rs).
    let archive = Archive {
        mac: None,
        contents: vec![Content::Encrypted(Kdf::Scrypt(0, 8, 1))],
    };
    let err = check_built(&archive).unwrap_err();
    assert!(
        err.starts_with(
            "an item of the PKCS#12 archive is encrypted with scrypt at a cost (N) of 0, which \
             is invalid"
        ),
        "{err}"
    );
    let source =
        crate::credential::certificate::CertificateSource::from_pkcs12(archive.der(), None);
    assert!(
        source
            .load(0)
            .unwrap_err()
            .contains("scrypt at a cost (N) of 0")
    );
}
