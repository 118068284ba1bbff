//! scripts/netns-cluster.sh: three nodes in three network namespaces on a bridge, with
//! default flags, find each other; a killed one is dropped within 3 s.

use std::process::Command;

use crate::support::{default_model, exo_bin, models_dir, root};

#[test]
fn three_nodes_in_network_namespaces_find_each_other_and_drop_a_killed_one() {
    // SAFETY-free check of the effective user: the script needs root for `ip netns`.
    let uid = Command::new("id").arg("-u").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "this test creates network namespaces and must run as root (as CI does)"
    );
    default_model();
    let output = Command::new("bash")
        .arg(root().join("scripts").join("netns-cluster.sh"))
        .env("EXO_BIN", exo_bin())
        .env("EXO_MODELS_DIR", models_dir())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "netns-cluster.sh failed:\n{stdout}\n{stderr}"
    );
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
