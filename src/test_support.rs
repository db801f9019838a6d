//! The integration tests' loopback HTTPS token authority, for the library's own tests that
//! need one (to reach a credential a chain builds, which the public API does not expose).
//! These files depend only on crates in `Cargo.toml`, never on the library.

#[path = "../tests/it/support/authority.rs"]
pub(crate) mod authority;
#[path = "../tests/it/support/clock.rs"]
#[allow(dead_code)]
pub(crate) mod clock;
#[path = "../tests/it/support/serve.rs"]
mod serve;
#[path = "../tests/it/support/tls.rs"]
mod tls;

/// What a test's `tracing` subscriber wrote: its writer
/// (`.with_writer(move || logs.clone())`), each clone writing to the same buffer.
#[derive(Clone, Default)]
pub(crate) struct Logs(pub(crate) std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
