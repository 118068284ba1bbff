//! Secrets on disk and off the command line: `exo keygen --out` writes a key only its
//! owner can read, a key file others can read is refused (not merely warned about), and
//! API and admin keys come from files or the environment.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{NodeProcess, WAIT, free_udp_port};
use crate::support::{default_model, exo_bin, models_dir};

fn exo(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(exo_bin())
        .args(args)
        .env_remove("EXO_API_KEY")
        .env_remove("EXO_ADMIN_KEY")
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn write_with_mode(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn keygen_writes_a_key_only_its_owner_can_read_and_never_overwrites_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster.key");
    let file = path.to_str().unwrap();
    let (ok, out, err) = exo(&["keygen", "--out", file]);
    assert!(ok, "{err}");
    assert!(out.is_empty(), "the key went to stdout: {out}");
    assert_eq!(mode(&path), 0o600);
    let key = std::fs::read_to_string(&path).unwrap();
    assert_eq!(key.trim().len(), 64, "{key}");
    assert!(err.contains("cluster key") && err.contains(file), "{err}");
    // A second run does not replace a key every node may already hold.
    let (ok, _, err) = exo(&["keygen", "--out", file]);
    assert!(!ok);
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), key);
}

/// Starts `exo node` with `args` and waits for it to exit; None if it is still running
/// after WAIT (it is then killed).
fn node_exit(dir: &Path, args: &[&str]) -> Option<(bool, String)> {
    let mut child = Command::new(exo_bin())
        .args(crate::support::LONE_CPU_NODE)
        .args(["--listen", "127.0.0.1", "--api-port", "0"])
        .arg("--data-dir")
        .arg(dir.join("node"))
        .args(args)
        .env("EXO_MODELS_DIR", models_dir())
        .env_remove("EXO_API_KEY")
        .env_remove("EXO_ADMIN_KEY")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
            return Some((status.success(), stderr));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_key_file_others_can_read_is_refused_with_a_clear_error() {
    default_model();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("cluster.key");
    write_with_mode(&key, &format!("{}\n", "ab".repeat(32)), 0o644);
    let api = dir.path().join("api.key");
    write_with_mode(&api, "sk-from-file\n", 0o640);
    for (flag, path) in [("--cluster-key", &key), ("--api-key-file", &api)] {
        let outcome = node_exit(dir.path(), &[flag, path.to_str().unwrap()]);
        let (ok, stderr) =
            outcome.unwrap_or_else(|| panic!("the node started with {flag} readable by others"));
        assert!(!ok, "{stderr}");
        assert!(
            stderr.contains("readable by other users") && stderr.contains("chmod 600"),
            "{flag}: {stderr}"
        );
    }
}

/// GET `url` with an optional bearer key: the status.
fn status(url: &str, key: Option<&str>) -> u16 {
    let mut request = ureq::get(url).timeout(Duration::from_secs(10));
    if let Some(key) = key {
        request = request.set("authorization", &format!("Bearer {key}"));
    }
    match request.call() {
        Ok(response) => response.status(),
        Err(ureq::Error::Status(code, _)) => code,
        Err(error) => panic!("GET {url}: {error}"),
    }
}

#[test]
fn api_and_admin_keys_come_from_files_or_the_environment() {
    default_model();
    let dir = tempfile::tempdir().unwrap();
    let api = dir.path().join("api.key");
    write_with_mode(
        &api,
        "# the API's keys, one a line\nsk-one\n\nsk-two\n",
        0o600,
    );
    let admin = dir.path().join("admin.key");
    write_with_mode(&admin, "adm-secret\n", 0o400);
    let node = NodeProcess::start_full(
        dir.path(),
        "secret",
        free_udp_port(),
        &models_dir(),
        &[("EXO_ADMIN_KEY_FILE", admin.to_str().unwrap())],
        &["--api-key-file", api.to_str().unwrap()],
    );
    let models = format!("{}/v1/models", node.url());
    let deadline = Instant::now() + WAIT;
    while ureq::get(&models)
        .call()
        .is_err_and(|e| matches!(e, ureq::Error::Transport(_)))
    {
        assert!(Instant::now() < deadline, "{}", node.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(status(&models, None), 401);
    assert_eq!(status(&models, Some("sk-one")), 200);
    assert_eq!(status(&models, Some("sk-two")), 200);
    assert_eq!(status(&models, Some("# the API's keys, one a line")), 401);
    let report = format!("{}/v1/resources/report", node.url());
    assert_eq!(status(&report, Some("sk-one")), 403);
    assert_eq!(status(&report, Some("adm-secret")), 200);
    // No secret in the node's command line, and none in its report.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", node.child.id())).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline);
    assert!(!cmdline.contains("sk-one") && !cmdline.contains("adm-secret"));

    // The clients read their keys from files too.
    let (ok, _, err) = exo(&[
        "resources",
        "--node",
        &node.url(),
        "--admin-key-file",
        admin.to_str().unwrap(),
        "list",
    ]);
    assert!(ok, "{err}");
    let (ok, out, err) = exo(&[
        "chat",
        "--node",
        &node.url(),
        "--api-key-file",
        api.to_str().unwrap(),
        "--prompt",
        "Say hi.",
        "--max-tokens",
        "2",
    ]);
    assert!(ok, "{err}");
    assert!(!out.trim().is_empty());
}
