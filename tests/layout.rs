//! The picture of the code stays true: `scripts/import-graph.py --check` finds no import
//! from a lower layer to a higher one, no loop between files, a layout section in lib.rs
//! that lists every module, and docs/import-graph*.dot drawn from the code as it is. And
//! the checker is no rubber stamp: on a copy of src/ with an upward import, or with two
//! files that import each other, it fails and names them.

use std::path::Path;
use std::process::{Command, Output};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The checker's run on `root` (a checkout, or a copy of its src/).
fn check(root: &Path) -> Output {
    Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/import-graph.py"))
        .args(["--check", "--root"])
        .arg(root)
        .output()
        .expect("cannot run python3 scripts/import-graph.py")
}

/// A copy of this checkout's src/ in a fresh directory.
fn copy_of_src() -> tempfile::TempDir {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    copy(&root().join("src"), &dir.path().join("src"));
    dir
}

/// Appends `code` to the file at `path` under the copy.
fn append(dir: &tempfile::TempDir, path: &str, code: &str) {
    let path = dir.path().join("src").join(path);
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(code);
    std::fs::write(path, text).unwrap();
}

#[test]
fn the_import_graph_has_no_upward_import_no_loop_and_its_picture_is_current() {
    let output = check(root());
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_checker_names_an_upward_import_and_a_loop() {
    let copy = copy_of_src();
    // The engine reaching up into the API; and two files of the flow using each other.
    append(
        &copy,
        "engine/serve/sampling.rs",
        "\nuse crate::api::ApiState;\n",
    );
    append(
        &copy,
        "node/flow/ledger.rs",
        "\nuse super::deadline::StepTimes;\n",
    );
    append(
        &copy,
        "node/flow/deadline.rs",
        "\nuse super::ledger::StepLedger;\n",
    );
    let output = check(copy.path());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("upward import: engine/serve/sampling.rs (engine) uses api/state.rs (api)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("files form a loop: node/flow/deadline.rs ↔ node/flow/ledger.rs"),
        "{stderr}"
    );
}
