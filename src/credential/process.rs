//! Running a helper program that hands us tokens (Azure CLI, Azure Developer CLI)
//! without trusting it to behave.
//!
//! [`run`] starts the program with no stdin, from a system directory, and bounds it:
//!
//! * **Time**: everything after the start must finish within the caller's timeout.
//! * **Memory**: at most [`MAX_OUTPUT`] bytes of stdout and of stderr are kept. The rest is read
//!   and thrown away rather than left in the pipe: a program blocked on a full pipe never exits,
//!   and its exit status is what the caller decides on.
//! * **Processes**: on Unix the program leads a process group of its own, and the whole group is
//!   killed (`SIGKILL`) on timeout and whenever the run is abandoned (the future dropped:
//!   cancellation, runtime shutdown). Killing only the direct child would leave its children
//!   running — Azure CLI's Linux launcher is a shell script that starts Python without `exec`.
//!   Elsewhere (Windows) only the direct child is killed: what it started lives on.
//! * **Exit, not EOF**: the run ends when the program exits. Whatever it wrote is already in the
//!   pipes and is read; processes it left behind that still hold the pipes open are killed
//!   (on Unix; on Windows they live on) instead of being waited for.
//! * **Working directory**: a system directory (`/bin`, else `/`, on Unix; `%SYSTEMROOT%` on
//!   Windows, and without it the program is not started), never the caller's, where a file
//!   planted for the tool could be picked up (azure-identity's `get_safe_working_dir`).
//!
//! Known limits, which safe code here cannot lift:
//!
//! * Killed processes other than the program itself are reaped by whoever adopts orphans. When
//!   this process is PID 1 of a container with no init, that is us, and they stay zombies:
//!   run such containers with an init (`docker run --init`, tini).
//! * The program inherits every file descriptor this process holds that was opened without
//!   close-on-exec (Rust's own are close-on-exec; a C library's may not be): nothing closes
//!   the rest before the program starts.
//! * The group is killed by its id, the program's process id, which stays reserved while any
//!   member of the group lives. A kill after the program was reaped (it exited, then its
//!   leftovers outside the group kept the pipes open past the grace, or the timeout ran out
//!   meanwhile) when no member is left could reach a new group that took the id in between;
//!   on Linux, which hands out ids in turn, that takes them wrapping around within that moment.
//!   Keeping the program unreaped until the kill needs a wait that does not reap, which tokio's
//!   `Child` does not offer.
//!
//! [`quote_stderr`] turns a failed program's stderr into one short, scrubbed line for an error.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};

use crate::redact::{excerpt, truncate};

/// The most bytes kept of a helper's stdout, and of its stderr (1 MiB). A token answer is a
/// few kilobytes; anything near this is not an answer.
pub(crate) const MAX_OUTPUT: usize = 1024 * 1024;

/// How many characters of a helper's stderr an error quotes.
pub(crate) use crate::redact::MAX_QUOTED_CHARS as MAX_QUOTE_CHARS;

/// After the program exits, how long its output pipes may stay open. What it wrote before
/// exiting is already in the pipes and is read at once; only processes it left behind holding
/// the pipes (which are then killed) make us wait this long.
const EXIT_GRACE: Duration = Duration::from_millis(100);

/// Bytes read per call.
const READ_CHUNK: usize = 8 * 1024;

/// What a helper printed, at most [`MAX_OUTPUT`] bytes of it.
#[derive(Default)]
pub(crate) struct Captured {
    /// The first bytes printed.
    pub(crate) bytes: Vec<u8>,
    /// Whether more than [`MAX_OUTPUT`] bytes came (the rest was read and discarded).
    pub(crate) truncated: bool,
}

/// Sizes only: a helper's stdout carries the token.
impl std::fmt::Debug for Captured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Captured")
            .field("len", &self.bytes.len())
            .field("truncated", &self.truncated)
            .finish()
    }
}

/// A helper that ran to its exit.
#[derive(Debug)]
pub(crate) struct Output {
    pub(crate) status: ExitStatus,
    pub(crate) stdout: Captured,
    pub(crate) stderr: Captured,
}

/// Why a helper gave no [`Output`].
#[derive(Debug)]
pub(crate) enum RunError {
    /// It could not be started (`NotFound`: not installed or not on `PATH`).
    Spawn(io::Error),
    /// It did not exit within the timeout; its process group (on Unix) was killed.
    TimedOut,
    /// Reading its output failed; its process group (on Unix) was killed.
    Read(io::Error),
}

/// Runs `command` (program, arguments and environment set by the caller) under the bounds of
/// the module docs. Stdin, stdout, stderr, the working directory and the process group are
/// set here.
pub(crate) async fn run(mut command: Command, timeout: Duration) -> Result<Output, RunError> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // The group kill below covers Unix; elsewhere this at least stops the direct child.
        .kill_on_drop(true);
    #[cfg(unix)]
    command.process_group(0);
    // Run from a system directory, not wherever the caller happens to be.
    command.current_dir(safe_working_dir().map_err(RunError::Spawn)?);
    let child = spawn(&mut command).await.map_err(RunError::Spawn)?;
    let mut running = Running::new(child);
    let mut stdout = Captured::default();
    let mut stderr = Captured::default();
    // On timeout `running` drops with the error, killing the group.
    let status = tokio::time::timeout(timeout, running.wait(&mut stdout, &mut stderr))
        .await
        .map_err(|_| RunError::TimedOut)?
        .map_err(RunError::Read)?;
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// A command running `program`, for [`run`]: see [`resolve_program`].
fn command(program: &Path) -> io::Result<Command> {
    resolve_program(program, std::env::current_dir).map(Command::new)
}

/// The path [`run`] starts `program` by. [`run`] starts it from a system directory, where a
/// relative path with a directory (`./tools/az`) would name another file or none, so such a
/// path is made absolute against our working directory (`cwd`, read only then); when that
/// cannot be read (deleted meanwhile), an error naming the path, not the path taken from the
/// system directory. A bare name (`az`) is still looked up on `PATH`.
fn resolve_program(
    program: &Path,
    cwd: impl FnOnce() -> io::Result<PathBuf>,
) -> io::Result<PathBuf> {
    let has_dir = program.parent().is_some_and(|p| !p.as_os_str().is_empty());
    if !(program.is_relative() && has_dir) {
        return Ok(program.to_owned());
    }
    cwd().map(|cwd| cwd.join(program)).map_err(|e| {
        io::Error::other(format!(
            "cannot resolve the relative program path {}: the working directory cannot be \
             read: {e}",
            program.display()
        ))
    })
}

/// A token-handing command-line tool, for the errors of [`run_tool`].
pub(crate) struct Tool {
    /// The credential reporting errors.
    pub(crate) credential: &'static str,
    /// The tool's name in messages ("Azure CLI").
    pub(crate) display: &'static str,
    /// What to do when it is not installed ("Install it from … and run 'az login'").
    pub(crate) install_hint: &'static str,
    /// The command to try in a terminal when it is too slow.
    pub(crate) try_command: &'static str,
}

/// The exit status of a program a shell could not find.
const NOT_FOUND_STATUS: i32 = 127;

/// Runs a tool's `program` with [`run`], its arguments and environment set by `configure`,
/// and maps every way it can give no usable output to a credential error: not installed
/// (also a launcher exiting 127), not startable (a relative path whose working directory is
/// gone), unreadable or too slow is *unavailable* (a chain moves on); more than
/// [`MAX_OUTPUT`] on stdout is a failure. The caller decides on any other exit status.
pub(crate) async fn run_tool(
    tool: &Tool,
    program: &Path,
    configure: impl FnOnce(&mut Command),
    timeout: Duration,
) -> Result<Output, crate::error::CredentialError> {
    use crate::error::CredentialError;
    let unavailable = |message: String| CredentialError::unavailable(tool.credential, message);
    let ran = match command(program) {
        Ok(mut command) => {
            configure(&mut command);
            run(command, timeout).await
        }
        Err(e) => Err(RunError::Spawn(e)),
    };
    let output = match ran {
        Ok(output) => output,
        Err(RunError::Spawn(e)) => {
            return Err(unavailable(match e.kind() {
                // A script whose interpreter is gone fails the same way (a pip-installed `az`
                // whose virtual environment was deleted).
                io::ErrorKind::NotFound if program.components().count() > 1 => format!(
                    "{} not found: {} does not exist, or it is a script whose interpreter \
                     does not. {}",
                    tool.display,
                    program.display(),
                    tool.install_hint
                ),
                io::ErrorKind::NotFound => format!(
                    "{} not found ({} is not on PATH, or it is a script whose interpreter is \
                     missing). {}",
                    tool.display,
                    program.display(),
                    tool.install_hint
                ),
                _ => format!(
                    "could not start {} ({}): {e}",
                    tool.display,
                    program.display()
                ),
            }));
        }
        Err(RunError::Read(e)) => {
            return Err(unavailable(format!(
                "reading {}'s output failed: {e}",
                tool.display
            )));
        }
        // Unavailable, as azure-identity's, so a chain moves on; marked as a timeout, which
        // may pass by itself, so that nothing remembers it as the tool's answer.
        Err(RunError::TimedOut) => {
            return Err(unavailable(format!(
                "{} did not answer within {timeout:?}. Check that '{}' works in a terminal",
                tool.display, tool.try_command
            ))
            .with_cause(crate::error::Cause {
                timeout: true,
                transient: true,
                ..Default::default()
            }));
        }
    };
    // Ended by a signal from elsewhere (the kernel's OOM killer, an operator): said so, not
    // "no error output". Our own timeout's kill is `TimedOut` above.
    #[cfg(unix)]
    if let Some(signal) = std::os::unix::process::ExitStatusExt::signal(&output.status) {
        let said = quote_stderr(&output.stderr.bytes)
            .map(|line| format!(": {line}"))
            .unwrap_or_default();
        return Err(CredentialError::authentication_failed(
            tool.credential,
            format!(
                "{} ({}) was ended by signal {signal}{said}",
                tool.display,
                program.display()
            ),
        ));
    }
    // A launcher script (Linux's `az`: bash running Python without `exec`) whose child was
    // ended by a signal exits 128 + N, with nothing on stderr.
    if let Some(code @ 129..=192) = output.status.code() {
        if quote_stderr(&output.stderr.bytes).is_none() {
            return Err(CredentialError::authentication_failed(
                tool.credential,
                format!(
                    "{} ({}) exited with status {code} and no error output: what it ran was \
                     probably ended by signal {} (the out-of-memory killer sends 9)",
                    tool.display,
                    program.display(),
                    code.saturating_sub(128)
                ),
            ));
        }
    }
    // 127 is the shells' "command not found": a launcher script whose interpreter or
    // program is gone. The tool is not installed properly, as azure-identity also reads it.
    if output.status.code() == Some(NOT_FOUND_STATUS) {
        let said = quote_stderr(&output.stderr.bytes)
            .map(|line| format!(": {line}"))
            .unwrap_or_default();
        return Err(unavailable(format!(
            "{} is not installed properly: {} exited with status {NOT_FOUND_STATUS}{said}. {}",
            tool.display,
            program.display(),
            tool.install_hint
        )));
    }
    if output.status.success() && output.stdout.truncated {
        return Err(CredentialError::authentication_failed(
            tool.credential,
            format!(
                "unexpected output from {}: more than {} MiB; check that '{}' prints one \
                 JSON object",
                tool.display,
                MAX_OUTPUT / (1024 * 1024),
                tool.try_command
            ),
        ));
    }
    Ok(output)
}

/// A started helper. Dropped before it is done, it kills the helper's process group (on Unix;
/// elsewhere the helper alone).
struct Running {
    child: Child,
    /// The group the helper leads: its process id, taken while it cannot have been reaped
    /// (so the id cannot belong to anyone else yet).
    #[cfg(unix)]
    group: Option<rustix::process::Pid>,
    /// Set once the helper has exited and nothing of its group holds our pipes: processes
    /// it started that have let go of our pipes are its business, not ours.
    done: bool,
}

impl Running {
    fn new(child: Child) -> Self {
        Self {
            #[cfg(unix)]
            group: child
                .id()
                .and_then(|id| i32::try_from(id).ok())
                .and_then(rustix::process::Pid::from_raw),
            child,
            done: false,
        }
    }

    /// Reads both pipes until the helper exits, then what is left in them; returns its status.
    async fn wait(
        &mut self,
        stdout: &mut Captured,
        stderr: &mut Captured,
    ) -> io::Result<ExitStatus> {
        let (Some(mut out_pipe), Some(mut err_pipe)) =
            (self.child.stdout.take(), self.child.stderr.take())
        else {
            return Err(io::Error::other("the program's output was not captured"));
        };
        let mut reading = std::pin::pin!(async {
            let (out, err) =
                tokio::join!(drain(&mut out_pipe, stdout), drain(&mut err_pipe, stderr));
            out.and(err)
        });
        enum First {
            Closed(io::Result<()>),
            Exited(io::Result<ExitStatus>),
        }
        let first = tokio::select! {
            read = &mut reading => First::Closed(read),
            status = self.child.wait() => First::Exited(status),
        };
        let status = match first {
            First::Closed(read) => {
                read?;
                // Pipes closed; the helper may still be running. The caller's timeout bounds it.
                self.child.wait().await?
            }
            First::Exited(status) => {
                let status = status?;
                // What the helper wrote before exiting is in the pipes and its readiness is
                // already known (it came no later than the exit's), so the readers are polled
                // and read it before this timer is ever looked at — also on a paused clock,
                // which jumps only when nothing is left to do. Only pipes held open by
                // processes it left behind run into the timer.
                match tokio::time::timeout(EXIT_GRACE, &mut reading).await {
                    Ok(read) => read?,
                    Err(_) => {
                        // The group id stays taken while any member lives, so this reaches
                        // the leftovers even though the helper itself has been reaped.
                        tracing::debug!(
                            "the program exited but processes it started kept its output \
                             open; killing its process group"
                        );
                        self.kill_group();
                    }
                }
                status
            }
        };
        self.done = true;
        Ok(status)
    }

    /// `SIGKILL` to the helper's whole process group (`ESRCH`: nothing of it is left).
    #[cfg(unix)]
    fn kill_group(&mut self) {
        if let Some(group) = self.group {
            if let Err(e) =
                rustix::process::kill_process_group(group, rustix::process::Signal::KILL)
            {
                if e != rustix::io::Errno::SRCH {
                    tracing::debug!(error = %e, "could not kill the program's process group");
                }
            }
        }
    }

    /// Without process groups, the direct child is all we can stop.
    #[cfg(not(unix))]
    fn kill_group(&mut self) {
        let _ = self.child.start_kill();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.done {
            self.kill_group();
        }
    }
}

/// Reads `pipe` to its end, keeping the first [`MAX_OUTPUT`] bytes in `into`. Cancel-safe:
/// what was read stays in `into`.
async fn drain<R: AsyncRead + Unpin>(pipe: &mut R, into: &mut Captured) -> io::Result<()> {
    let mut chunk = [0u8; READ_CHUNK];
    loop {
        let read = pipe.read(&mut chunk).await?;
        if read == 0 {
            return Ok(());
        }
        let room = MAX_OUTPUT.saturating_sub(into.bytes.len());
        let keep = read.min(room);
        if let Some(kept) = chunk.get(..keep) {
            into.bytes.extend_from_slice(kept);
        }
        if keep < read {
            into.truncated = true;
        }
    }
}

/// Starts the command. "Text file busy" (a process forked elsewhere in this program still
/// holds a just-written executable open, between its fork and exec) passes in moments, so it
/// is retried a few times.
async fn spawn(command: &mut Command) -> io::Result<Child> {
    let mut attempts = 0u32;
    loop {
        match command.spawn() {
            Err(e) if e.kind() == io::ErrorKind::ExecutableFileBusy && attempts < 5 => {
                attempts = attempts.saturating_add(1);
                // The machine's time, on a blocking thread: the other process's exec takes
                // real time, and a paused test clock would pass a timer's 20 ms at once (it
                // stands still while a blocking task runs).
                let pause = || std::thread::sleep(Duration::from_millis(20));
                if tokio::task::spawn_blocking(pause).await.is_err() {
                    return Err(e);
                }
            }
            other => return other,
        }
    }
}

/// The directory [`run`] starts a program in: see [`working_dir`].
fn safe_working_dir() -> io::Result<PathBuf> {
    if cfg!(windows) {
        let root = std::env::var_os("SYSTEMROOT").map(PathBuf::from);
        working_dir(root.as_deref())
    } else {
        working_dir(Some(Path::new("/bin")))
    }
}

/// `system_dir` (`/bin` on Unix, `%SYSTEMROOT%` on Windows) when it is a directory; else `/`
/// on Unix (a minimal container image may have no `/bin`), and elsewhere an error: never the
/// caller's working directory, where a file planted for the tool could be picked up
/// (azure-identity refuses to run without `SYSTEMROOT` too). Not `NotFound`, which would read
/// as the tool not being installed.
fn working_dir(system_dir: Option<&Path>) -> io::Result<PathBuf> {
    match system_dir.filter(|dir| dir.is_dir()) {
        Some(dir) => Ok(dir.to_owned()),
        None if cfg!(unix) => Ok(PathBuf::from("/")),
        None => Err(io::Error::other(
            "there is no system directory to run it from: the SYSTEMROOT environment variable \
             is not set or names no directory",
        )),
    }
}

/// The line of a failed helper's stderr worth quoting: the first `ERROR:` line (without the
/// prefix), else the first non-blank one; scrubbed of secrets, control characters replaced,
/// at most [`MAX_QUOTE_CHARS`] characters (`…` when cut). `None` when stderr is blank.
pub(crate) fn quote_stderr(stderr: &[u8]) -> Option<String> {
    let lines = || {
        stderr
            .split(|&b| b == b'\n')
            .map(<[u8]>::trim_ascii)
            .filter(|l| !l.is_empty())
    };
    let error_line = lines().find_map(|l| {
        l.strip_prefix(b"ERROR:")
            .map(<[u8]>::trim_ascii)
            .filter(|e| !e.is_empty())
    });
    let line = match error_line {
        Some(line) => line,
        None => lines().next()?,
    };
    // One character more than shown, so `truncate` can tell a cut line from a short one.
    let quoted = excerpt(line, &[], MAX_QUOTE_CHARS.saturating_add(1));
    (!quoted.is_empty()).then(|| truncate(&quoted, MAX_QUOTE_CHARS))
}

/// Scopes reach a command line: ASCII letters, digits and `_-.:/` only.
pub(crate) fn validate_scope(tool: &str, scope: &str) -> Result<(), String> {
    if scope.is_empty() || scope.starts_with('-') {
        return Err(format!("scope {scope:?} is not valid for {tool}"));
    }
    match scope
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "_-.:/".contains(*c)))
    {
        Some(bad) => Err(format!(
            "scope {scope:?} contains {bad:?}; only ASCII letters, digits, '_', '-', '.', ':' and '/' are allowed"
        )),
        None => Ok(()),
    }
}

/// Whether `haystack` contains `needle`.
pub(crate) fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::path::Path;

    fn sh(script: &str, dir: &Path) -> Command {
        let mut command = Command::new("/bin/sh");
        command.args(["-c", script, "sh"]).arg(dir);
        command
    }

    /// Recorded process ids, one per line.
    fn pids(dir: &Path) -> Vec<i32> {
        std::fs::read_to_string(dir.join("pids"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Running (not a zombie) and one of this test's (its command line names `dir`).
    fn alive(pid: i32, dir: &Path) -> bool {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        !matches!(state, None | Some(Some('Z' | 'X')))
            && contains(&cmdline, dir.as_os_str().as_encoded_bytes())
    }

    /// "Text file busy" is retried over the machine's time: a paused test clock does not cut
    /// the wait for another process's exec short. (Before, five timer sleeps passed at once
    /// on a paused clock, so a test's script written while another thread forked failed.)
    #[tokio::test(start_paused = true)]
    async fn text_file_busy_is_retried_over_real_time() {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = tempfile::tempdir().unwrap();
        let program = dir.path().join("program");
        // Held open for writing throughout, as a forked child holds it until its exec.
        let _writer = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o755)
            .open(&program)
            .unwrap();
        let started = std::time::Instant::now();
        let error = spawn(&mut Command::new(&program)).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::ExecutableFileBusy, "{error}");
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(100), "{waited:?}");
    }

    /// Polls `condition` up to 1000 times, 10 ms apart (a bound, not a timing assumption).
    fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
        for _ in 0..1000 {
            if condition() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("timed out waiting until {what}");
    }

    /// Kills whatever this test's processes left, even when the test fails.
    struct Cleanup<'a>(&'a Path);

    impl Drop for Cleanup<'_> {
        fn drop(&mut self) {
            for pid in pids(self.0) {
                if alive(pid, self.0) {
                    if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                    }
                }
            }
        }
    }

    #[tokio::test]
    async fn output_beyond_the_cap_is_read_and_discarded() {
        let dir = tempfile::tempdir().unwrap();
        // 3 MiB on each stream: a helper left blocked on a full pipe would never exit 3.
        let script = "head -c 3145728 /dev/zero; head -c 3145728 /dev/zero >&2; exit 3";
        let output = run(sh(script, dir.path()), Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(output.status.code(), Some(3));
        for captured in [&output.stdout, &output.stderr] {
            assert_eq!(captured.bytes.len(), MAX_OUTPUT);
            assert!(captured.truncated);
        }
        let output = run(
            sh("printf ok; printf no >&2", dir.path()),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
        assert_eq!(output.stdout.bytes, b"ok");
        assert_eq!(output.stderr.bytes, b"no");
        assert!(!output.stdout.truncated && !output.stderr.truncated);
    }

    #[tokio::test]
    async fn dropping_a_run_kills_the_whole_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let _cleanup = Cleanup(dir.path());
        // The helper and a child it waits for, both recording their ids and then blocking.
        let script = r#"echo $$ >> "$1/pids"
mkfifo "$1/never"
/bin/sh -c 'echo $$ >> "$1/pids"; read _ < "$1/never"' sh "$1"
exit $?"#;
        let running = run(sh(script, dir.path()), Duration::from_secs(600));
        let started = tokio::task::spawn_blocking({
            let dir = dir.path().to_owned();
            move || eventually("both processes started", || pids(&dir).len() == 2)
        });
        tokio::select! {
            done = running => panic!("the run ended: {done:?}"),
            started = started => started.unwrap(),
        }
        // `running` was dropped by the select.
        let recorded = pids(dir.path());
        assert_ne!(recorded[0], recorded[1]);
        for pid in recorded {
            eventually(&format!("process {pid} is gone"), || {
                !alive(pid, dir.path())
            });
        }
    }

    #[test]
    fn the_error_line_is_quoted_short_and_scrubbed() {
        assert_eq!(
            quote_stderr(b"WARNING: old version\n\r\nERROR: AADSTS1: bad eyJa.b.c\nERROR: more"),
            Some("AADSTS1: bad ***".to_owned())
        );
        assert_eq!(
            quote_stderr(b"\n  Traceback (most recent call last):\n  x"),
            Some("Traceback (most recent call last):".to_owned())
        );
        assert_eq!(quote_stderr(b" \n\t\n"), None);
        assert_eq!(quote_stderr(b"ERROR:\nboom"), Some("ERROR:".to_owned()));
        let long = format!("ERROR: {}\x1b[31m", "x".repeat(5000));
        let quoted = quote_stderr(long.as_bytes()).unwrap();
        assert_eq!(quoted, format!("{}…", "x".repeat(MAX_QUOTE_CHARS)));
        assert_eq!(
            quote_stderr(b"a\x1b[31mb\xffc"),
            Some("a [31mb\u{fffd}c".to_owned())
        );
        assert!(contains(b"please run 'az login'", b"az login"));
        assert!(!contains(b"az logi", b"az login"));
        assert!(!contains(b"", b""));
    }

    /// Without `/bin` a program runs from `/`, never from the caller's directory (before, no
    /// directory was set and the program inherited ours).
    #[test]
    fn without_bin_the_working_directory_is_the_root_not_ours() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(working_dir(Some(dir.path())).unwrap(), dir.path());
        let missing = dir.path().join("bin");
        assert_eq!(working_dir(Some(&missing)).unwrap(), Path::new("/"));
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        assert_eq!(working_dir(Some(&file)).unwrap(), Path::new("/"));
        assert_eq!(working_dir(None).unwrap(), Path::new("/"));
        assert_eq!(safe_working_dir().unwrap(), Path::new("/bin"));
    }

    /// A relative path with a directory is taken from our working directory, read only for
    /// it; when that cannot be read, the error names the path (before, the path was run as it
    /// is, from `/bin`: `/bin/tools/az`).
    #[test]
    fn a_relative_program_path_is_resolved_against_the_working_directory_or_refused() {
        let gone = || Err(io::Error::from(io::ErrorKind::NotFound));
        let unread = || -> io::Result<PathBuf> { panic!("the working directory was read") };
        let cwd = || Ok(PathBuf::from("/home/me"));
        assert_eq!(
            resolve_program(Path::new("./tools/az"), cwd).unwrap(),
            Path::new("/home/me/./tools/az")
        );
        assert_eq!(
            resolve_program(Path::new("az"), unread).unwrap(),
            Path::new("az")
        );
        assert_eq!(
            resolve_program(Path::new("/usr/bin/az"), unread).unwrap(),
            Path::new("/usr/bin/az")
        );
        let error = resolve_program(Path::new("./tools/az"), gone).unwrap_err();
        assert_ne!(error.kind(), io::ErrorKind::NotFound, "not 'az not found'");
        let message = error.to_string();
        assert!(
            message.starts_with(
                "cannot resolve the relative program path ./tools/az: the working directory \
                 cannot be read: "
            ),
            "{message}"
        );
    }
}
