//! Stand-in command-line tools (`az`, `azd`): POSIX shell scripts written into a temp dir,
//! recording how they were run, and a check that the processes they started are gone.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Writes an executable `name` into `dir` running `body` (POSIX sh), after recording its
/// process id in `dir/pids`.
pub fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    let script = format!(
        "#!/bin/sh\necho $$ >> '{dir}/pids'\n{body}\n",
        dir = dir.display()
    );
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Writes an executable `name` into `dir` running `body` (POSIX sh). The script records its
/// arguments, one per line, in `dir/args`, its working directory, `NO_COLOR` (azd's) and
/// `AZURE_CORE_NO_COLOR` (az's) in `dir/context`, and appends a line to `dir/calls` per run.
pub fn fake_tool(dir: &Path, name: &str, body: &str) -> PathBuf {
    script(
        dir,
        name,
        &format!(
            "printf '%s\\n' \"$@\" > '{dir}/args'\nprintf 'cwd=%s\\nNO_COLOR=%s\\nAZURE_CORE_NO_COLOR=%s\\n' \"$PWD\" \"$NO_COLOR\" \"$AZURE_CORE_NO_COLOR\" > '{dir}/context'\necho run >> '{dir}/calls'\n{body}",
            dir = dir.display()
        ),
    )
}

/// The lines of a file the stand-ins write (empty when it does not exist).
pub fn lines(path: PathBuf) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Shell that blocks for good without starting a process: opening a FIFO nobody writes to.
pub fn hang(dir: &Path) -> String {
    format!("read _ < '{}/never'", dir.display())
}

/// Makes the FIFO `dir/name`.
fn fifo(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let status = std::process::Command::new("mkfifo")
        .arg(&path)
        .status()
        .unwrap();
    assert!(status.success(), "mkfifo {}", path.display());
    path
}

/// Polls `condition` up to 1000 times, 10 ms apart: a bound on waiting for another process,
/// not a timing assumption (it returns as soon as the condition holds).
fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if condition() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("gave up waiting until {what}");
}

/// The ids recorded in `dir/pids`.
pub fn pids(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("pids"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Whether `pid` is running — not gone and not a zombie — and one of the stand-ins in `dir`:
/// its command line names `dir`, so a reused process id is never taken for ours.
fn alive(dir: &Path, pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next());
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let dir = dir.as_os_str().as_encoded_bytes();
    !matches!(state, None | Some('Z' | 'X')) && cmdline.windows(dir.len()).any(|w| w == dir)
}

/// The stand-in processes of one test. Dropped, it kills any still running, so a failing
/// test leaves none behind.
pub struct Procs {
    dir: PathBuf,
}

impl Procs {
    /// Also makes the `never` FIFO of [`hang`].
    pub fn new(dir: &Path) -> Self {
        fifo(dir, "never");
        Self {
            dir: dir.to_owned(),
        }
    }

    pub fn pids(&self) -> Vec<i32> {
        pids(&self.dir)
    }

    /// Waits, in a blocking task (bounded, see [`eventually`]), until `condition` holds for the
    /// stand-ins' directory. On a paused clock this holds time still: tokio does not
    /// auto-advance while a blocking task runs, so no timeout can fire before the condition
    /// holds.
    pub async fn wait_until(
        &self,
        what: &'static str,
        mut condition: impl FnMut(&Path) -> bool + Send + 'static,
    ) {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || eventually(what, || condition(&dir)))
            .await
            .unwrap();
    }

    /// [`wait_until`](Self::wait_until) `count` processes have recorded their ids.
    pub async fn until_started(&self, count: usize) {
        self.wait_until("the processes started", move |dir| pids(dir).len() >= count)
            .await;
    }

    /// Every recorded process has ended (a zombie counts as ended).
    pub fn assert_all_gone(&self) {
        let pids = self.pids();
        assert!(!pids.is_empty(), "no process recorded its id");
        for pid in pids {
            eventually("the recorded processes are gone", || !alive(&self.dir, pid));
        }
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for pid in self.pids() {
            if alive(&self.dir, pid) {
                if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
            }
        }
    }
}
