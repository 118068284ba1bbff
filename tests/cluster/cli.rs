//! The resource CLI against a running node.

use std::process::Command;

use crate::harness::{NodeProcess, free_udp_port, get_json, wait_for_ring};
use crate::support::{default_model, exo_bin};

fn exo(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(exo_bin()).args(args).output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn the_resource_cli_lists_checks_resets_and_exports_a_running_nodes_resources() {
    default_model();
    let dir = tempfile::tempdir().unwrap();
    let port = free_udp_port();
    let a = NodeProcess::start(dir.path(), "cli-a", port);
    let b = NodeProcess::start(dir.path(), "cli-b", port);
    wait_for_ring(&a, 2);
    wait_for_ring(&b, 2);
    let url = a.url();

    let (ok, out, err) = exo(&["resources", "list", "--node", &url]);
    assert!(ok, "{err}");
    for (id, kind) in [
        ("engine", "inference_engine"),
        ("grpc_server", "grpc_server"),
        ("discovery", "udp_discovery"),
        ("api_server", "api_server"),
        ("monitor", "resource_monitor"),
        ("peer:cli-b", "peer_handle"),
    ] {
        let line = out
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("{id} missing from:\n{out}"));
        assert!(line.contains(kind) && line.contains("ready"), "{line}");
    }

    let (ok, out, err) = exo(&["resources", "list", "--node", &url, "--json"]);
    assert!(ok, "{err}");
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(listed["resources"].as_array().unwrap().len() >= 6);

    let (ok, out, err) = exo(&["resources", "health", "--node", &url]);
    assert!(ok, "{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("peer:cli-b") && l.contains("yes")),
        "{out}"
    );

    // Reset the peer handle: it is initialized again.
    let before = peer_attempts(&url);
    let (ok, out, err) = exo(&[
        "resources",
        "reset",
        "peer:cli-b",
        "--type",
        "peer_handle",
        "--node",
        &url,
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("peer:cli-b") && out.contains("ready"), "{out}");
    assert_eq!(peer_attempts(&url), before + 1);

    let (ok, _, err) = exo(&[
        "resources",
        "reset",
        "peer:cli-b",
        "--type",
        "grpc_server",
        "--node",
        &url,
    ]);
    assert!(
        !ok && err.contains("no resource 'peer:cli-b' of type 'grpc_server'"),
        "{err}"
    );

    let report = dir.path().join("report.json");
    let (ok, out, err) = exo(&[
        "resources",
        "export",
        "--output",
        report.to_str().unwrap(),
        "--node",
        &url,
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("report.json"));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(report["schema_version"], 1);
    assert!(report["monitor"]["round"].as_u64().is_some());

    let (ok, _, err) = exo(&["resources", "list", "--node", "http://127.0.0.1:1"]);
    assert!(!ok && err.contains("cannot reach the node"), "{err}");
}

fn peer_attempts(url: &str) -> u64 {
    let listed = get_json(&format!("{url}/v1/resources")).unwrap();
    listed["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "peer:cli-b")
        .map(|r| r["stats"]["initialize_attempts"].as_u64().unwrap())
        .unwrap()
}

#[test]
fn exo_run_starts_a_node_answers_and_stops() {
    default_model();
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(exo_bin())
        .args([
            "run",
            "--model",
            "smollm2-135m",
            "--device",
            "cpu",
            "--discovery",
            "none",
        ])
        .args([
            "--api-port",
            "0",
            "--listen",
            "127.0.0.1",
            "--max-tokens",
            "32",
            "--node-id",
            "run",
        ])
        .args(["--prompt", crate::e2e::PROMPT])
        .arg("--data-dir")
        .arg(dir.path().join("run"))
        .env("EXO_MODELS_DIR", crate::support::models_dir())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert_eq!(
        stdout.trim_end(),
        crate::e2e::generate_locally(crate::e2e::PROMPT, 32)
    );
    assert!(
        stderr.contains("ring: run[0,30)") && stderr.contains("tokens/s"),
        "{stderr}"
    );
}

#[test]
fn exo_chat_asks_a_running_node() {
    default_model();
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(dir.path(), "chatty", free_udp_port());
    wait_for_ring(&node, 1);
    let (ok, out, err) = exo(&[
        "chat",
        "--node",
        &node.url(),
        "--prompt",
        crate::e2e::PROMPT,
        "--max-tokens",
        "32",
    ]);
    assert!(ok, "{err}");
    assert_eq!(
        out.trim_end(),
        crate::e2e::generate_locally(crate::e2e::PROMPT, 32)
    );
    assert!(err.contains("ring: chatty[0,30)"), "{err}");
}

/// An open API is anyone's who can reach it: without --listen or an API key, a node's
/// API listens on loopback only (its gRPC too, the cluster being open).
#[test]
fn without_listen_or_a_key_the_api_listens_on_loopback() {
    use std::io::{BufRead, BufReader};
    default_model();
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(exo_bin())
        .args(crate::support::LONE_CPU_NODE)
        .args(["--api-port", "0"])
        .arg("--data-dir")
        .arg(dir.path().join("quiet"))
        .env("EXO_MODELS_DIR", crate::support::models_dir())
        .env_remove("EXO_LISTEN")
        .env_remove("EXO_API_KEY")
        .env_remove("EXO_API_KEY_FILE")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .split("API ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .map(String::from);
    let info = url
        .as_ref()
        .map(|url| get_json(&format!("{url}/v1/resources")));
    let _ = child.kill();
    let _ = child.wait();
    let url = url.unwrap_or_else(|| panic!("no API address in {line:?}"));
    assert!(url.starts_with("http://127.0.0.1:"), "{line}");
    let info = info.unwrap().unwrap();
    let listen = |kind: &str| {
        info["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["type"] == kind)
            .unwrap()["info"]["listen"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(listen("api_server").starts_with("127.0.0.1:"), "{info}");
    assert!(listen("grpc_server").starts_with("127.0.0.1:"), "{info}");
}
