//! `exo bench --concurrency N`: many users at once, through a node's HTTP API.
//!
//! Either against a running server (`--node URL`: an exo node, or any OpenAI-compatible
//! server such as llama.cpp's, for a side-by-side) or against nodes the bench starts itself
//! on loopback (`--nodes K`, optionally each pinned to its own core). N streams send the
//! same kind of greedy request at once (`ignore_eos`, so every answer has exactly
//! `--tokens` tokens); the bench reports aggregate and per-stream decode tokens/s and time
//! to first token (p50/p99).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;

/// What to run.
pub struct LoadSpec {
    pub concurrency: usize,
    pub tokens: usize,
    pub prompt_words: usize,
    pub rounds: usize,
    pub model: String,
    pub api_key: Option<String>,
}

/// One stream's measurements.
#[derive(Debug, Clone, Copy)]
struct Stream {
    started: Instant,
    first_token: Instant,
    finished: Instant,
    tokens: usize,
}

/// The figures of one load.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadReport {
    pub concurrency: usize,
    pub tokens_per_stream: usize,
    /// Generated tokens of all streams over the wall time of the round.
    pub aggregate_tok_s: f64,
    /// Median over streams of (tokens − 1) / (last token − first token).
    pub per_stream_decode_tok_s: f64,
    pub ttft_p50_s: f64,
    pub ttft_p99_s: f64,
    pub wall_s: f64,
}

/// Text every prompt is cut from (a different starting word per stream, so that no two
/// prompts are the same).
const WORDS: &str = "the quick brown fox jumps over the lazy dog while the river runs past the old mill and \
    the people of the valley gather to watch the evening sky turn from gold to violet as the first stars \
    appear above the hills and the wind carries the smell of rain across the fields";

fn prompt(stream: usize, words: usize) -> String {
    let all: Vec<&str> = WORDS.split_whitespace().collect();
    (0..words)
        .map(|i| all[(stream * 7 + i) % all.len()])
        .collect::<Vec<_>>()
        .join(" ")
}

/// The id of the first model a server lists at /v1/models.
pub fn served_model(base: &str) -> anyhow::Result<String> {
    let models: serde_json::Value = ureq::get(&format!("{base}/v1/models"))
        .call()
        .with_context(|| format!("{base}/v1/models"))?
        .into_json()?;
    models["data"][0]["id"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("{base}/v1/models lists no model"))
}

/// Runs `rounds` rounds of the load against `base` (http://host:port); the median round
/// (by aggregate throughput) is reported.
pub fn run_load(base: &str, spec: &LoadSpec) -> anyhow::Result<LoadReport> {
    // A warm-up request: every node of the ring loads its layers.
    one_stream(base, spec, 999, 8).context("the warm-up request failed")?;
    let mut reports = Vec::new();
    for _ in 0..spec.rounds.max(1) {
        let started = Instant::now();
        let handles: Vec<_> = (0..spec.concurrency)
            .map(|i| {
                let base = base.to_string();
                let spec = LoadSpec {
                    model: spec.model.clone(),
                    api_key: spec.api_key.clone(),
                    ..*spec
                };
                std::thread::spawn(move || one_stream(&base, &spec, i, spec.tokens))
            })
            .collect();
        let mut streams = Vec::new();
        for handle in handles {
            streams.push(
                handle
                    .join()
                    .map_err(|_| anyhow::anyhow!("a stream panicked"))??,
            );
        }
        let wall = streams.iter().map(|s| s.finished).max().unwrap_or(started) - started;
        let total: usize = streams.iter().map(|s| s.tokens).sum();
        let mut ttft: Vec<f64> = streams
            .iter()
            .map(|s| (s.first_token - s.started).as_secs_f64())
            .collect();
        ttft.sort_by(f64::total_cmp);
        let mut decode: Vec<f64> = streams
            .iter()
            .map(|s| {
                s.tokens.saturating_sub(1) as f64
                    / (s.finished - s.first_token).as_secs_f64().max(1e-9)
            })
            .collect();
        decode.sort_by(f64::total_cmp);
        let pick = |v: &[f64], q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
        reports.push(LoadReport {
            concurrency: spec.concurrency,
            tokens_per_stream: spec.tokens,
            aggregate_tok_s: total as f64 / wall.as_secs_f64().max(1e-9),
            per_stream_decode_tok_s: pick(&decode, 0.5),
            ttft_p50_s: pick(&ttft, 0.5),
            ttft_p99_s: pick(&ttft, 0.99),
            wall_s: wall.as_secs_f64(),
        });
    }
    reports.sort_by(|a, b| a.aggregate_tok_s.total_cmp(&b.aggregate_tok_s));
    Ok(reports.swap_remove(reports.len() / 2))
}

/// One streaming greedy request; the times of its first and last tokens.
fn one_stream(base: &str, spec: &LoadSpec, index: usize, tokens: usize) -> anyhow::Result<Stream> {
    let body = json!({
        "model": spec.model,
        "messages": [{"role": "user", "content": prompt(index, spec.prompt_words)}],
        "max_tokens": tokens,
        "temperature": 0,
        "stream": true,
        "ignore_eos": true,
        "stream_options": {"include_usage": true},
    });
    let started = Instant::now();
    let mut request = ureq::post(&format!("{base}/v1/chat/completions"))
        .timeout(Duration::from_secs(1800))
        .set("content-type", "application/json");
    if let Some(key) = &spec.api_key {
        request = request.set("authorization", &format!("Bearer {key}"));
    }
    let response = request
        .send_string(&body.to_string())
        .map_err(|e| anyhow::anyhow!("{base}: {e}"))?;
    let mut first_token = None;
    let mut chunks = 0;
    let mut usage = None;
    for line in BufReader::new(response.into_reader()).lines() {
        let line = line?;
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data.trim() == "[DONE]" {
            break;
        }
        let value: serde_json::Value =
            serde_json::from_str(data).context("a malformed stream chunk")?;
        if let Some(error) = value.get("error") {
            bail!("the server reported an error: {error}");
        }
        if let Some(n) = value
            .pointer("/usage/completion_tokens")
            .and_then(|v| v.as_u64())
        {
            usage = Some(n as usize);
        }
        let has_text = value
            .pointer("/choices/0/delta/content")
            .and_then(|c| c.as_str())
            .is_some_and(|c| !c.is_empty());
        if has_text {
            first_token.get_or_insert_with(Instant::now);
            chunks += 1;
        }
    }
    let finished = Instant::now();
    Ok(Stream {
        started,
        first_token: first_token.unwrap_or(finished),
        finished,
        tokens: usage.unwrap_or(chunks.max(tokens)),
    })
}

/// Nodes the bench started, stopped (and their files removed) when dropped.
pub struct LocalRing {
    children: Vec<Child>,
    pub api: String,
    _dir: tempfile_dir::TempDir,
}

impl Drop for LocalRing {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts `nodes` exo nodes on loopback (each pinned to core i when `pin`), and waits
/// until the first one plans over all of them.
pub fn start_ring(nodes: usize, pin: bool, model_args: &[String]) -> anyhow::Result<LocalRing> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let dir = tempfile_dir::TempDir::new()?;
    let base_port = 20000 + (std::process::id() as u16 % 20000);
    let discovery = base_port;
    let mut children = Vec::new();
    for i in 0..nodes {
        let api = base_port + 1 + i as u16;
        let mut command = if pin {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(i.to_string()).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        command
            .arg("node")
            .args(model_args)
            .args(["--listen", "127.0.0.1", "--discovery-interfaces", "lo"])
            .args([
                "--api-port",
                &api.to_string(),
                "--discovery-port",
                &discovery.to_string(),
            ])
            .arg("--data-dir")
            .arg(dir.path().join(format!("node-{i}")))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(
                dir.path().join(format!("node-{i}.log")),
            )?);
        if nodes == 1 {
            command.args(["--discovery", "none"]);
        }
        if pin {
            // One core each: one compute thread each.
            command
                .env("CANDLE_NUM_THREADS", "1")
                .env("RAYON_NUM_THREADS", "1");
        }
        children.push(command.spawn().context("cannot start a node")?);
    }
    let api = format!("http://127.0.0.1:{}", base_port + 1);
    let ring = LocalRing {
        children,
        api: api.clone(),
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let planned = ureq::get(&format!("{api}/v1/topology"))
            .timeout(Duration::from_secs(2))
            .call()
            .ok()
            .and_then(|r| r.into_json::<serde_json::Value>().ok())
            .and_then(|t| {
                t.pointer("/partition/entries")
                    .and_then(|e| e.as_array())
                    .map(|e| e.len())
            });
        if planned == Some(nodes) {
            return Ok(ring);
        }
        if Instant::now() > deadline {
            bail!(
                "the {nodes} nodes did not form a ring within 2 minutes (logs in the node data dirs)"
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A temporary directory, removed when dropped (the bench's node data dirs and logs).
mod tempfile_dir {
    use std::path::{Path, PathBuf};

    pub struct TempDir(PathBuf);

    impl TempDir {
        pub fn new() -> std::io::Result<Self> {
            let path = std::env::temp_dir().join(format!(
                "exo-bench-{}-{}",
                std::process::id(),
                uuid::Uuid::new_v4().simple()
            ));
            std::fs::create_dir_all(&path)?;
            Ok(TempDir(path))
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
