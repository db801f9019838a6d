//! Cross-check with azure-identity 1.27 on the wire.

use crate::support::mi_emulator::{Emulator, Flavour};

use super::{Id, python_token};

#[tokio::test]
async fn probe_python() {
    for flavour in Flavour::ALL {
        for id in Id::ALL {
            let em = Emulator::start(flavour).await;
            let answer = python_token(&em, id).await;
            println!("{flavour:?} {id:?}: {answer}");
            for r in em.requests() {
                println!("   {} {} {:?} {:?} body={:?} status={:?}", r.method, r.path, r.query, r.identity_headers, r.body, r.status);
                println!("   all headers: {:?}", r.headers);
            }
        }
    }
}
