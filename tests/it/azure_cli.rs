//! AzureCliCredential running a stand-in `az` (a shell script that answers like Azure CLI
//! 2.54+): the command line, parsing, caching, each failure mode, and the bounds on a
//! misbehaving `az` (output floods, children left running, pipes held open). The real `az` is
//! not installed on CI machines; its absence is covered too.
//!
//! Every stand-in process records its id in `pids`; tests that start processes which could
//! outlive them hold a [`Procs`], which checks that they are gone and kills any left over,
//! also when the test fails.

use base64::Engine;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tower_identity::{AzureCliCredential, CredentialExt, TokenRequest};

use crate::support::programs::{Procs, fake_tool, hang, lines, pids, script};

const MGMT: &str = "https://management.azure.com/.default";

/// A stand-in `az` (see [`fake_tool`]).
fn fake_az(dir: &Path, body: &str) -> PathBuf {
    fake_tool(dir, "az", body)
}

/// Writes an `az` shaped like Azure CLI's Linux launcher (a script ending in
/// `python3 -Im azure.cli "$@"`, without `exec`): it runs `dir/python`, a script running
/// `python_body`, and waits for it, so `az` and its child are two processes.
fn fake_launcher(dir: &Path, python_body: &str) -> PathBuf {
    script(dir, "python", python_body);
    // `exit $?` after the call: no shell can turn it into an `exec`.
    fake_az(
        dir,
        &format!(
            "'{dir}/python' -Im azure.cli \"$@\"\nexit $?",
            dir = dir.display()
        ),
    )
}

const SIGNED_IN: &str = r#"now=$(date +%s); exp=$((now + 3600))
printf '{"accessToken":"cli-token","expiresOn":"2099-01-01 00:00:00.000000","expires_on":%s,"subscription":"sub","tenant":"t","tokenType":"Bearer"}\n' "$exp""#;

fn credential(az: &Path) -> AzureCliCredential {
    AzureCliCredential::builder().program(az).build().unwrap()
}

#[tokio::test]
async fn runs_az_with_the_documented_arguments_and_reads_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let az = fake_az(dir.path(), SIGNED_IN);
    let token = credential(&az).get_token([MGMT]).await.unwrap();
    assert_eq!(token.secret().expose_secret(), "cli-token");
    assert!(token.expires_in() > Duration::from_secs(3500));
    assert_eq!(
        lines(dir.path().join("args")),
        [
            "account",
            "get-access-token",
            "--output",
            "json",
            "--scope",
            MGMT
        ]
    );
    // Run from a system directory with colour off, whatever the caller's directory.
    let bin = std::fs::canonicalize("/bin").unwrap();
    let context = lines(dir.path().join("context"));
    assert_eq!(context[0], format!("cwd={}", bin.display()));
    assert_eq!(context[2], "AZURE_CORE_NO_COLOR=true");
}

#[tokio::test]
async fn a_tenant_is_passed_with_tenant_flag() {
    let dir = tempfile::tempdir().unwrap();
    let az = fake_az(dir.path(), SIGNED_IN);
    let cli = AzureCliCredential::builder()
        .program(&az)
        .tenant_id("contoso.onmicrosoft.com")
        .additionally_allowed_tenants(["fabrikam"])
        .build()
        .unwrap();
    cli.get_token([MGMT]).await.unwrap();
    assert_eq!(
        lines(dir.path().join("args"))[6..],
        ["--tenant", "contoso.onmicrosoft.com"]
    );
    cli.get_token_with(TokenRequest::new([MGMT]).with_tenant_id("fabrikam"))
        .await
        .unwrap();
    assert_eq!(
        lines(dir.path().join("args"))[6..],
        ["--tenant", "fabrikam"]
    );
    let err = cli
        .get_token_with(TokenRequest::new([MGMT]).with_tenant_id("other"))
        .await
        .unwrap_err();
    assert!(err.is_invalid_request());

    // No tenant of its own (az's current account): a requested tenant is passed on, as
    // azure-identity does, with no allowed list.
    credential(&az)
        .get_token_with(TokenRequest::new([MGMT]).with_tenant_id("other"))
        .await
        .unwrap();
    assert_eq!(lines(dir.path().join("args"))[6..], ["--tenant", "other"]);
}

#[tokio::test]
async fn concurrent_callers_start_one_az_process_and_reuse_its_token() {
    let dir = tempfile::tempdir().unwrap();
    let procs = Procs::new(dir.path());
    // az says it is waiting, then waits (bounded) until the test lets it answer.
    let az = fake_az(
        dir.path(),
        &format!(
            ": > '{dir}/waiting'\n\
             i=0; while [ ! -e '{dir}/go' ] && [ $i -lt 1000 ]; do sleep 0.01; i=$((i + 1)); done\n\
             {SIGNED_IN}",
            dir = dir.path().display()
        ),
    );
    let cli = credential(&az);
    // All 50 calls are polled before any spawned task runs (this is a current-thread
    // runtime), so each has started or joined an acquisition before an az can start; and no
    // az answers before `go`, which comes once an az is waiting. Without the shared
    // acquisition, 50 az would start.
    let calls = futures_util::future::join_all((0..50).map(|_| cli.get_token([MGMT])));
    let open_gate = async {
        procs
            .wait_until("az is waiting", |dir| dir.join("waiting").exists())
            .await;
        std::fs::write(dir.path().join("go"), "").unwrap();
    };
    let (results, ()) = tokio::join!(calls, open_gate);
    assert_eq!(lines(dir.path().join("calls")).len(), 1, "az runs");
    for result in results {
        assert_eq!(result.unwrap().secret().expose_secret(), "cli-token");
    }
    cli.get_token([MGMT]).await.unwrap();
    assert_eq!(lines(dir.path().join("calls")).len(), 1, "az runs");
}

#[tokio::test]
async fn not_signed_in_is_unavailable_and_says_run_az_login() {
    let dir = tempfile::tempdir().unwrap();
    let az = fake_az(
        dir.path(),
        "echo \"ERROR: Please run 'az login' to setup account.\" >&2\nexit 1",
    );
    let err = credential(&az).get_token([MGMT]).await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(err.message().contains("Run 'az login'"), "{err}");
}

#[tokio::test]
async fn other_az_failures_stop_a_chain_and_quote_az() {
    let dir = tempfile::tempdir().unwrap();
    let az = fake_az(
        dir.path(),
        "echo 'ERROR: AADSTS50076: Due to a configuration change you must use multi-factor authentication.' >&2\nexit 1",
    );
    let err = credential(&az).get_token([MGMT]).await.unwrap_err();
    assert!(err.is_authentication_failed(), "{err}");
    assert!(
        err.message().starts_with("Azure CLI failed: AADSTS50076"),
        "{err}"
    );
}

/// A launcher that cannot find its interpreter exits 127: `az` is not installed properly,
/// which is *unavailable* (a chain moves on), quoting what the launcher said.
#[tokio::test]
async fn a_launcher_exiting_127_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let az = fake_az(
        dir.path(),
        "echo '/usr/bin/az: 3: /opt/az/bin/python3: No such file or directory' >&2\nexit 127",
    );
    let err = credential(&az).get_token([MGMT]).await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(err.message().contains("No such file or directory"), "{err}");
    assert!(err.message().contains("exited with status 127"), "{err}");
}

/// The timeout fires only once `az` runs (time stands still until it has recorded its id), and
/// `az` is gone after it. The error is *unavailable*, as azure-identity's, and a timeout that
/// may pass by itself (before, neither `is_timeout` nor `is_transient`).
#[tokio::test(start_paused = true)]
async fn a_slow_az_is_killed_after_the_timeout_and_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let procs = Procs::new(dir.path());
    let az = fake_az(dir.path(), &hang(dir.path()));
    let cli = AzureCliCredential::builder()
        .program(&az)
        .process_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let (result, ()) = tokio::join!(cli.get_token([MGMT]), procs.until_started(1));
    let err = result.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(err.is_timeout() && err.is_transient(), "{err:?}");
    assert!(
        err.message().contains("did not answer within 300ms"),
        "{err}"
    );
    assert_eq!(procs.pids().len(), 1);
    procs.assert_all_gone();
}

/// A claims challenge for a scope this credential holds a token for: `az` too slow on the run
/// that checks for a new token is *authentication failed* (its identity answered), still
/// marked as a timeout. Before, the mark was lost, and the bearer layer's memory of failed
/// claims kept the timeout as if it were `az`'s answer.
#[tokio::test(start_paused = true)]
async fn a_slow_az_on_a_claims_challenge_after_a_token_is_a_failure_and_a_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let procs = Procs::new(dir.path());
    let az = fake_az(
        dir.path(),
        &format!(
            "if [ \"$(wc -l < '{dir}/calls')\" -ge 2 ]; then {hang}; fi\n{SIGNED_IN}",
            dir = dir.path().display(),
            hang = hang(dir.path())
        ),
    );
    let cli = AzureCliCredential::builder()
        .program(&az)
        .process_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    // Time stands still until the first az has answered and been reaped.
    let answered = procs.wait_until("the first az was reaped", |dir| {
        let pids = pids(dir);
        pids.len() == 1 && std::fs::metadata(format!("/proc/{}", pids[0])).is_err()
    });
    let (result, ()) = tokio::join!(cli.get_token([MGMT]), answered);
    result.unwrap();
    let challenge = TokenRequest::new([MGMT]).with_claims("{}");
    let (result, ()) = tokio::join!(cli.get_token_with(challenge), procs.until_started(2));
    let err = result.unwrap_err();
    assert!(err.is_authentication_failed(), "{err}");
    assert!(err.is_timeout() && err.is_transient(), "{err:?}");
    assert!(err.message().contains("did not answer within 5s"), "{err}");
    procs.assert_all_gone();
}

#[tokio::test]
async fn garbage_output_is_a_clear_failure() {
    let dir = tempfile::tempdir().unwrap();
    let az = fake_az(dir.path(), "echo 'WARNING: something'");
    let err = credential(&az).get_token([MGMT]).await.unwrap_err();
    assert!(err.is_authentication_failed());
    assert!(
        err.message()
            .contains("unexpected output from Azure CLI: not JSON"),
        "{err}"
    );
}

#[tokio::test]
async fn bad_scopes_and_claims_never_reach_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let az = fake_az(dir.path(), SIGNED_IN);
    let cli = credential(&az);
    for scope in ["https://x/.default; rm -rf /", "--debug", "a b"] {
        let err = cli.get_token([scope]).await.unwrap_err();
        assert!(err.is_invalid_request(), "{scope}: {err}");
    }
    let err = cli
        .get_token([MGMT, "https://graph.microsoft.com/.default"])
        .await
        .unwrap_err();
    assert!(err.message().contains("exactly one scope"), "{err}");
    let err = cli
        .get_token_with(TokenRequest::new([MGMT]).with_claims("{}"))
        .await
        .unwrap_err();
    assert!(
        err.is_unavailable() && err.message().contains("--claims-challenge"),
        "{err}"
    );
    assert!(lines(dir.path().join("calls")).is_empty());
}

/// A claims challenge: `az` takes no claims, so the answer is the `az login` command to run,
/// filled in; once the user has run it, `az` answers a new token and the next challenge takes
/// it instead of the rejected one this credential held (which would have stayed until its
/// renewal).
#[tokio::test]
async fn a_claims_challenge_advises_the_sign_in_and_takes_the_new_token_once_signed_in() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "before").unwrap();
    let az = fake_az(
        dir.path(),
        &format!(
            r#"if [ -e '{dir}/fail' ]; then echo 'ERROR: AADSTS50076: MFA required' >&2; exit 1; fi
now=$(date +%s); exp=$((now + 3600)); tok=$(cat '{token}')
printf '{{"accessToken":"%s","expires_on":%s,"tokenType":"Bearer"}}\n' "$tok" "$exp""#,
            dir = dir.path().display(),
            token = token.display()
        ),
    );
    let cli = AzureCliCredential::builder()
        .program(&az)
        .tenant_id("contoso")
        .build()
        .unwrap();
    let held = cli.get_token([MGMT]).await.unwrap();
    assert_eq!(held.secret().expose_secret(), "before");
    let claims = r#"{"access_token":{"acrs":{"essential":true,"value":"c1"}}}"#;
    let challenge = || TokenRequest::new([MGMT]).with_claims(claims);
    let err = cli.get_token_with(challenge()).await.unwrap_err();
    // This credential has answered: another member of a chain must not answer instead.
    assert!(err.is_authentication_failed(), "{err}");
    let command = format!(
        "az login --claims-challenge {} --tenant contoso --scope {MGMT}",
        base64::engine::general_purpose::STANDARD.encode(claims)
    );
    assert!(err.message().contains(&command), "{err}");
    assert_eq!(
        lines(dir.path().join("calls")).len(),
        2,
        "az asked once more"
    );

    std::fs::write(&token, "after").unwrap();
    let answer = cli.get_token_with(challenge()).await.unwrap();
    assert_eq!(answer.secret().expose_secret(), "after");
    let next = cli.get_token([MGMT]).await.unwrap();
    assert_eq!(next.secret().expose_secret(), "after", "cached in place");
    assert_eq!(lines(dir.path().join("calls")).len(), 3);

    // Concurrent challenges share one run of `az`.
    let all = futures_util::future::join_all((0..10).map(|_| cli.get_token_with(challenge())));
    for result in all.await {
        let err = result.unwrap_err();
        assert!(err.message().contains(&command), "{err}");
    }
    assert_eq!(lines(dir.path().join("calls")).len(), 4);
    // What `az` said when it failed is part of the advice.
    std::fs::write(dir.path().join("fail"), "").unwrap();
    let err = cli.get_token_with(challenge()).await.unwrap_err();
    assert!(
        err.message().contains(&command) && err.message().contains("AADSTS50076"),
        "{err}"
    );
}

/// With no token held (this credential has not answered), the advice is *unavailable*, as
/// azure-identity's: a chain moves on.
#[tokio::test]
async fn a_claims_challenge_before_any_token_is_unavailable_and_runs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let az = fake_az(dir.path(), SIGNED_IN);
    let err = credential(&az)
        .get_token_with(TokenRequest::new([MGMT]).with_claims("{}"))
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(lines(dir.path().join("calls")).is_empty());
}

/// Blank claims are no claims (as azure-identity): the token is served as usual.
#[tokio::test]
async fn blank_claims_are_no_claims() {
    let dir = tempfile::tempdir().unwrap();
    let az = fake_az(dir.path(), SIGNED_IN);
    let token = credential(&az)
        .get_token_with(TokenRequest::new([MGMT]).with_claims(" "))
        .await
        .unwrap();
    assert_eq!(token.secret().expose_secret(), "cli-token");
}

/// `az` runs from a system directory; a relative program path still names the file relative
/// to ours.
#[tokio::test]
async fn a_relative_program_path_is_taken_from_our_working_directory() {
    let cwd = std::env::current_dir().unwrap();
    let dir = tempfile::tempdir_in(&cwd).unwrap();
    fake_az(dir.path(), SIGNED_IN);
    let relative = Path::new(".")
        .join(dir.path().strip_prefix(&cwd).unwrap())
        .join("az");
    let token = credential(&relative).get_token([MGMT]).await.unwrap();
    assert_eq!(token.secret().expose_secret(), "cli-token");
}

// Linux only: `getcwd` fails once the directory is deleted there (ENOENT); elsewhere it may
// still return the old path.
/// The child's working directory, which it enters and deletes (see
/// [`child_runs_a_relative_az_from_a_deleted_working_directory`]).
#[cfg(target_os = "linux")]
const CHILD_GONE_CWD: &str = "TOWER_IDENTITY_TEST_GONE_CWD";
/// The child's result line starts with this.
#[cfg(target_os = "linux")]
const CHILD_RESULT: &str = "gone-cwd-result: ";

/// A relative program path whose working directory is gone (deleted under a running
/// program) cannot be resolved: the error says so and names the path. Before, the path was
/// run as it is from `az`'s system directory (`/bin/tools/az`), and the error said `az` was
/// not installed. The working directory is the process's: changed in a child (this test
/// binary again, running only the child test).
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_relative_program_path_without_a_working_directory_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let gone = dir.path().join("gone");
    std::fs::create_dir(&gone).unwrap();
    let output = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "azure_cli::child_runs_a_relative_az_from_a_deleted_working_directory",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_GONE_CWD, &gone)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "the child test did not run and pass:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let result = stdout
        .lines()
        .find_map(|line| line.split_once(CHILD_RESULT).map(|(_, result)| result))
        .unwrap_or_else(|| panic!("no result line:\n{stdout}"));
    assert!(
        result.contains(
            "cannot resolve the relative program path ./tools/az: the working directory \
             cannot be read"
        ),
        "{result}"
    );
    assert!(result.starts_with("unavailable "), "{result}");
}

/// The child: enters the directory named in its environment, deletes it, and runs
/// `./tools/az`; the error is reported on stdout.
#[cfg(target_os = "linux")]
#[tokio::test]
#[ignore = "the child process of a_relative_program_path_without_a_working_directory_is_refused_naming_it"]
async fn child_runs_a_relative_az_from_a_deleted_working_directory() {
    let gone = std::env::var_os(CHILD_GONE_CWD)
        .unwrap_or_else(|| panic!("run by its parent test, which sets {CHILD_GONE_CWD}"));
    std::env::set_current_dir(&gone).unwrap();
    std::fs::remove_dir(&gone).unwrap();
    assert!(std::env::current_dir().is_err(), "the directory is gone");
    let error = credential(Path::new("./tools/az"))
        .get_token([MGMT])
        .await
        .unwrap_err();
    let kind = if error.is_unavailable() {
        "unavailable"
    } else {
        "failed"
    };
    println!("{CHILD_RESULT}{kind} {}", error.message());
}

#[tokio::test]
async fn missing_az_is_unavailable_with_an_install_hint() {
    let err = AzureCliCredential::builder()
        .program("/nonexistent/bin/az")
        .build()
        .unwrap()
        .get_token([MGMT])
        .await
        .unwrap_err();
    assert!(err.is_unavailable());
    assert!(err.message().contains("https://aka.ms/azure-cli"), "{err}");
    assert!(
        err.message().contains("/nonexistent/bin/az does not exist"),
        "a path is not looked up on PATH: {err}"
    );
}

/// `az` found, but a script whose interpreter is gone (a deleted virtual environment): the
/// same "not found" from the system, and the message names that cause too.
#[tokio::test]
async fn an_az_script_whose_interpreter_is_gone_is_named_as_a_cause() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let az = dir.path().join("az");
    std::fs::write(&az, "#!/nonexistent/venv/bin/python\n").unwrap();
    std::fs::set_permissions(&az, std::fs::Permissions::from_mode(0o755)).unwrap();
    let err = credential(&az).get_token([MGMT]).await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(err.message().contains("interpreter"), "{err}");
}

/// `az` ended by a signal from elsewhere (the OOM killer, say): said, with the signal, also
/// when it is a launcher's child that was ended silently (the launcher exits 128 + 9).
#[tokio::test]
async fn an_az_ended_by_a_signal_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let az = fake_az(dir.path(), "echo 'about to go' >&2; kill -9 $$");
    let err = credential(&az).get_token([MGMT]).await.unwrap_err();
    assert!(err.is_authentication_failed(), "{err}");
    assert!(
        err.message().contains("ended by signal 9") && err.message().contains("about to go"),
        "{err}"
    );
    // Its stderr kept from the shell's own "Killed" report, which would be quoted instead.
    let dir = tempfile::tempdir().unwrap();
    let az = fake_az(dir.path(), "{ sh -c 'kill -9 $$'; } 2>/dev/null\nexit $?");
    let err = credential(&az).get_token([MGMT]).await.unwrap_err();
    assert!(err.is_authentication_failed(), "{err}");
    assert!(
        err.message().contains("status 137") && err.message().contains("signal 9"),
        "{err}"
    );
}

#[tokio::test]
async fn a_tenant_that_reads_as_an_option_is_refused_by_the_builder() {
    for option in ["--debug", "-h", "--subscription"] {
        let err = AzureCliCredential::builder()
            .program("/nonexistent/bin/az")
            .tenant_id(option)
            .build()
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("must start with a letter or digit"),
            "{option}: {err}"
        );
    }
}

#[tokio::test]
async fn a_requested_tenant_that_reads_as_an_option_never_reaches_az() {
    let dir = tempfile::tempdir().unwrap();
    let az = fake_az(dir.path(), SIGNED_IN);
    let cli = AzureCliCredential::builder()
        .program(&az)
        .additionally_allowed_tenants(["*"])
        .build()
        .unwrap();
    for option in ["-h", "--debug", "--subscription"] {
        let err = cli
            .get_token_with(TokenRequest::new([MGMT]).with_tenant_id(option))
            .await
            .unwrap_err();
        assert!(err.is_invalid_request(), "{option}: {err}");
        assert!(
            err.message().contains("must start with a letter or digit"),
            "{err}"
        );
    }
    assert!(lines(dir.path().join("calls")).is_empty());
    // The same credential does run az for a tenant that is a tenant.
    cli.get_token_with(TokenRequest::new([MGMT]).with_tenant_id("fabrikam"))
        .await
        .unwrap();
    assert_eq!(lines(dir.path().join("calls")).len(), 1);
}

#[tokio::test]
async fn an_absurd_expires_on_is_clamped_to_a_week() {
    let dir = tempfile::tempdir().unwrap();
    let az = fake_az(
        dir.path(),
        r#"printf '{"accessToken":"cli-token","expires_on":1e20,"tokenType":"Bearer"}\n'"#,
    );
    let token = credential(&az).get_token([MGMT]).await.unwrap();
    assert_eq!(token.secret().expose_secret(), "cli-token");
    let week = Duration::from_secs(7 * 24 * 3600);
    assert!(token.expires_in() <= week, "{:?}", token.expires_in());
    assert!(
        token.expires_in() > week - Duration::from_secs(60),
        "{:?}",
        token.expires_in()
    );
}

#[tokio::test]
async fn a_flood_of_stderr_is_drained_and_quoted_in_one_short_scrubbed_line() {
    let dir = tempfile::tempdir().unwrap();
    // 20 MB on one stderr line. Had we stopped reading, az would block on the full pipe
    // and never exit 1.
    let az = fake_az(
        dir.path(),
        "printf 'ERROR: failed for eyJhbGciOi.eyJzdWIi.c2ln ' >&2\n\
         head -c 20000000 /dev/zero | tr '\\0' x >&2\nexit 1",
    );
    let err = credential(&az).get_token([MGMT]).await.unwrap_err();
    assert!(err.is_authentication_failed(), "{err}");
    let quoted = "failed for *** ";
    assert_eq!(
        err.message(),
        format!(
            "Azure CLI failed: {quoted}{}…",
            "x".repeat(300 - quoted.len())
        )
    );
}

#[tokio::test]
async fn more_than_a_mebibyte_on_stdout_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let az = fake_az(
        dir.path(),
        &format!("{SIGNED_IN}\nhead -c 5000000 /dev/zero | tr '\\0' ' '"),
    );
    let err = credential(&az).get_token([MGMT]).await.unwrap_err();
    assert!(err.is_authentication_failed(), "{err}");
    assert!(
        err.message()
            .starts_with("unexpected output from Azure CLI: more than 1 MiB"),
        "{err}"
    );
}

#[tokio::test]
async fn a_launcher_script_running_python_without_exec_answers() {
    let dir = tempfile::tempdir().unwrap();
    let procs = Procs::new(dir.path());
    let python = format!(
        "printf '%s\\n' \"$@\" > '{}/python-args'\n{SIGNED_IN}",
        dir.path().display()
    );
    let az = fake_launcher(dir.path(), &python);
    let token = credential(&az).get_token([MGMT]).await.unwrap();
    assert_eq!(token.secret().expose_secret(), "cli-token");
    let pids = procs.pids();
    assert_eq!(pids.len(), 2, "az and its python: {pids:?}");
    assert_ne!(pids[0], pids[1]);
    assert_eq!(
        lines(dir.path().join("python-args"))[..4],
        ["-Im", "azure.cli", "account", "get-access-token"]
    );
    procs.assert_all_gone();
}

#[tokio::test(start_paused = true)]
async fn on_timeout_a_launcher_script_and_its_child_are_both_killed() {
    let dir = tempfile::tempdir().unwrap();
    let procs = Procs::new(dir.path());
    let az = fake_launcher(dir.path(), &hang(dir.path()));
    let cli = AzureCliCredential::builder()
        .program(&az)
        .process_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let (result, ()) = tokio::join!(cli.get_token([MGMT]), procs.until_started(2));
    let err = result.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(err.message().contains("did not answer within 5s"), "{err}");
    let pids = procs.pids();
    assert_eq!(pids.len(), 2, "az and its python: {pids:?}");
    procs.assert_all_gone();
}

#[test]
fn runtime_shutdown_kills_a_running_az_and_its_child() {
    let dir = tempfile::tempdir().unwrap();
    let procs = Procs::new(dir.path());
    let az = fake_launcher(dir.path(), &hang(dir.path()));
    let cli = AzureCliCredential::builder()
        .program(&az)
        .process_timeout(Duration::from_secs(600))
        .build()
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let call = runtime.spawn(async move { cli.get_token([MGMT]).await });
    runtime.block_on(procs.until_started(2));
    assert!(!call.is_finished());
    // Dropping the runtime drops the acquisition task, and with it the running az.
    drop(runtime);
    assert_eq!(procs.pids().len(), 2);
    procs.assert_all_gone();
}

#[tokio::test(start_paused = true)]
async fn az_is_answered_on_exit_though_a_background_child_holds_its_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let procs = Procs::new(dir.path());
    script(dir.path(), "linger", &hang(dir.path()));
    let az = fake_az(
        dir.path(),
        &format!("{SIGNED_IN}\n'{}/linger' &\nexit 0", dir.path().display()),
    );
    let cli = AzureCliCredential::builder()
        .program(&az)
        .process_timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let started = tokio::time::Instant::now();
    // Time stands still until az has exited and been reaped (its /proc entry is gone) while
    // its background child lives on: then only a credential that waits for the end of
    // stdout rather than for az's exit would run into the 60 s timeout.
    let az_reaped = procs.wait_until("az was reaped and its child runs", |dir| {
        let pids = pids(dir);
        pids.len() == 2 && std::fs::metadata(format!("/proc/{}", pids[0])).is_err()
    });
    let (result, ()) = tokio::join!(cli.get_token([MGMT]), az_reaped);
    assert_eq!(result.unwrap().secret().expose_secret(), "cli-token");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    procs.assert_all_gone();
}
