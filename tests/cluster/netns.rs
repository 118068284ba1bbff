//! scripts/netns-cluster.sh: three nodes in three network namespaces on a bridge, with
//! default flags, find each other; a killed one is dropped within 3 s.

use std::process::Command;

use crate::support::{default_model, exo_bin, models_dir, root};

/// Runs `scripts/<script>` (as root: it makes network namespaces) with this build and
/// the default model; its standard output, once it succeeded.
fn run_netns_script(script: &str) -> String {
    let uid = Command::new("id").arg("-u").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "this test creates network namespaces and must run as root (as CI does)"
    );
    default_model();
    let output = Command::new("bash")
        .arg(root().join("scripts").join(script))
        .env("EXO_BIN", exo_bin())
        .env("EXO_MODELS_DIR", models_dir())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{script} failed:\n{stdout}\n{stderr}"
    );
    stdout
}

#[test]
fn three_nodes_in_network_namespaces_find_each_other_and_drop_a_killed_one() {
    let stdout = run_netns_script("netns-cluster.sh");
    assert_eq!(
        stdout.matches("dropped the killed node within").count(),
        2,
        "{stdout}"
    );
    // Nothing was left behind.
    let namespaces = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&namespaces.stdout).contains("exo-x"),
        "namespaces left behind"
    );
}

/// scripts/netns-trust.sh: three keyed nodes and an intruder without the key on one
/// bridge; the intruder's forged, replayed and gRPC attempts get it nothing, the ring
/// answers, and a capture of the bridge shows no prompt text.
#[test]
fn a_keyed_cluster_in_network_namespaces_shuts_out_an_intruder_and_hides_prompts() {
    let stdout = run_netns_script("netns-trust.sh");
    assert!(stdout.contains("netns-trust: ok"), "{stdout}");
    assert_eq!(stdout.matches("refused {").count(), 3, "{stdout}");
}

/// scripts/netns-open.sh: an open node (no key, default flags) and a stranger on the same
/// link. The stranger's unicast announcements are refused and counted, it is never listed
/// or dialled, and neither the node's API nor its gRPC port answers it.
#[test]
fn a_stranger_on_the_lan_gets_nothing_from_an_open_node() {
    let stdout = run_netns_script("netns-open.sh");
    assert!(stdout.contains("netns-open: ok"), "{stdout}");
    assert!(
        stdout.contains("stranger: adopted 0, dials 0, reachable {'api': False, 'grpc': False}"),
        "{stdout}"
    );
}
