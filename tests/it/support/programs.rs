//! Stand-in command-line tools (`az`, `azd`): POSIX shell scripts written into a temp dir,
//! recording how they were run.

use std::path::{Path, PathBuf};

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
