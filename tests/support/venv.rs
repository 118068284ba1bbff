//! The tools of the tests that drive outside programs: Python virtualenvs under target/
//! with the packages they use (from pip, made once, a lock against parallel tests) — the
//! official OpenAI, Anthropic and Ollama clients; the web UI and metrics tests' tools —
//! and headless Chromium from the distribution (scripts/install-chromium.sh installs it
//! when missing).

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use super::root;

/// A Python with the official `openai` client.
pub fn openai_python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON
        .get_or_init(|| venv("openai-venv", "import openai", &["openai>=1.40,<3"]))
        .clone()
}

/// A Python with the official `ollama` client.
pub fn ollama_python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON
        .get_or_init(|| venv("ollama-venv", "import ollama", &["ollama>=0.4,<1"]))
        .clone()
}

/// A Python with the official `anthropic` client.
pub fn anthropic_python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            // Below 1: the 2.x client (2.17) refuses `temperature` in Messages.create,
            // which the test sends as the Messages API documents it.
            venv(
                "anthropic-venv",
                "import anthropic",
                &["anthropic>=0.40,<1"],
            )
        })
        .clone()
}

/// Python with `websocket-client` (to speak the DevTools protocol), `prometheus-client`
/// (its text-format parser) and `pillow` (to look at screenshots).
pub fn ui_python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            venv(
                "ui-venv",
                "import websocket, prometheus_client, PIL",
                &[
                    "websocket-client>=1.6,<2",
                    "prometheus-client>=0.17,<1",
                    "pillow>=10,<13",
                ],
            )
        })
        .clone()
}

fn venv(name: &str, probe: &str, packages: &[&str]) -> PathBuf {
    let target = root().join("target");
    std::fs::create_dir_all(&target).unwrap();
    let lock = std::fs::File::create(target.join(format!("{name}.lock"))).unwrap();
    lock.lock().unwrap();
    let venv = target.join(name);
    let python = venv.join("bin").join("python");
    let ready = Command::new(&python)
        .args(["-c", probe])
        .status()
        .is_ok_and(|s| s.success());
    if !ready {
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .unwrap();
        assert!(made.success(), "python3 -m venv failed");
        let installed = Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(packages)
            .status()
            .unwrap();
        assert!(installed.success(), "pip install {packages:?} failed");
    }
    python
}

/// The path of the distribution's Chromium, installed first if it is missing.
pub fn chromium() -> PathBuf {
    static BROWSER: OnceLock<PathBuf> = OnceLock::new();
    BROWSER
        .get_or_init(|| {
            let output = Command::new("bash")
                .arg(root().join("scripts").join("install-chromium.sh"))
                .output()
                .expect("cannot run scripts/install-chromium.sh");
            assert!(
                output.status.success(),
                "scripts/install-chromium.sh failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
        })
        .clone()
}
