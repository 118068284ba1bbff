//! Download progress: a shared registry of downloads per model that a node reads for its
//! resource report (and a web UI could poll), and a progress display for the command line
//! — a bar with bytes, rate and ETA on a terminal, plain periodic lines otherwise.

use std::collections::{HashMap, VecDeque};
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::memory::human_bytes;

/// Where a download stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DownloadState {
    Running,
    Done,
    Failed,
}

/// One model's download, as the node reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DownloadStatus {
    pub model: String,
    /// What is being fetched: "layers 0..10", "whole file".
    pub what: String,
    pub state: DownloadState,
    /// Bytes fetched by this download (not counting what was already on disk).
    pub bytes_done: u64,
    /// Bytes this download has to fetch.
    pub bytes_total: u64,
    /// Over the last few seconds.
    pub bytes_per_second: f64,
    pub eta_seconds: Option<f64>,
    /// Unix time the download started, in seconds.
    pub started_at: f64,
    pub error: Option<String>,
}

/// How progress is shown as it happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Display {
    /// Nothing printed (a node: its report shows progress).
    Silent,
    /// A bar redrawn in place on stderr.
    Bar,
    /// A line on stderr every so often (logs, CI).
    Lines(Duration),
    /// A log line (`tracing`, info) every so often: a node, whose stderr is its log
    /// (text or JSON), so that a first load's download shows as it goes.
    Log(Duration),
}

/// The downloads of this process, by model. Clones share the registry.
#[derive(Clone)]
pub struct DownloadProgress {
    shared: Arc<Mutex<Registry>>,
    display: Display,
}

impl Default for DownloadProgress {
    fn default() -> Self {
        Self::new(Display::Silent)
    }
}

impl std::fmt::Debug for DownloadProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DownloadProgress")
            .field("display", &self.display)
            .field("downloads", &self.snapshot())
            .finish()
    }
}

#[derive(Default)]
struct Registry {
    downloads: HashMap<String, Tracked>,
    next_id: u64,
}

struct Tracked {
    id: u64,
    status: DownloadStatus,
    started: Instant,
    /// (when, bytes done) over the last seconds, for the rate.
    samples: VecDeque<(Instant, u64)>,
    last_shown: Option<Instant>,
    cancel: Arc<AtomicBool>,
}

const RATE_WINDOW: Duration = Duration::from_secs(5);

impl DownloadProgress {
    pub fn new(display: Display) -> Self {
        DownloadProgress {
            shared: Arc::default(),
            display,
        }
    }

    /// A bar when stderr is a terminal, a line every ten seconds when it is not.
    pub fn for_command_line() -> Self {
        Self::new(if std::io::stderr().is_terminal() {
            Display::Bar
        } else {
            Display::Lines(Duration::from_secs(10))
        })
    }

    /// Every download this process started (running, done or failed), by model id.
    pub fn snapshot(&self) -> Vec<DownloadStatus> {
        let registry = self.shared.lock().expect("progress lock");
        let mut all: Vec<DownloadStatus> = registry
            .downloads
            .values()
            .map(|t| t.status.clone())
            .collect();
        all.sort_by(|a, b| a.model.cmp(&b.model));
        all
    }

    pub fn status(&self, model: &str) -> Option<DownloadStatus> {
        let registry = self.shared.lock().expect("progress lock");
        registry.downloads.get(model).map(|t| t.status.clone())
    }

    /// Asks the running download of `model` to stop at its next chunk boundary (what it
    /// fetched stays on disk for the next attempt). Returns whether one was running.
    pub fn cancel(&self, model: &str) -> bool {
        let registry = self.shared.lock().expect("progress lock");
        match registry.downloads.get(model) {
            Some(t) if t.status.state == DownloadState::Running => {
                t.cancel.store(true, Ordering::Relaxed);
                true
            }
            _ => false,
        }
    }

    /// Registers a download of `total` bytes (replacing an earlier one of the same model).
    pub fn start(&self, model: &str, what: &str, total: u64) -> ProgressHandle {
        let cancel = Arc::new(AtomicBool::new(false));
        let mut registry = self.shared.lock().expect("progress lock");
        registry.next_id += 1;
        let id = registry.next_id;
        let now = Instant::now();
        registry.downloads.insert(
            model.to_string(),
            Tracked {
                id,
                status: DownloadStatus {
                    model: model.to_string(),
                    what: what.to_string(),
                    state: DownloadState::Running,
                    bytes_done: 0,
                    bytes_total: total,
                    bytes_per_second: 0.0,
                    eta_seconds: None,
                    started_at: SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map(|d| d.as_secs_f64())
                        .unwrap_or(0.0),
                    error: None,
                },
                started: now,
                samples: VecDeque::from([(now, 0)]),
                last_shown: None,
                cancel: cancel.clone(),
            },
        );
        ProgressHandle {
            progress: self.clone(),
            model: model.to_string(),
            id,
            cancel,
            ended: false,
        }
    }

    /// Applies `change` to the download `id` of `model` (if it is still the current one)
    /// and shows it when the display is due.
    fn update(&self, model: &str, id: u64, change: impl FnOnce(&mut DownloadStatus)) {
        let line = {
            let mut registry = self.shared.lock().expect("progress lock");
            let Some(tracked) = registry.downloads.get_mut(model).filter(|t| t.id == id) else {
                return;
            };
            change(&mut tracked.status);
            tracked.refresh_rate();
            tracked.line_due(self.display)
        };
        if let Some(line) = line {
            if let Display::Log(_) = self.display {
                tracing::info!("{}", line.trim_end());
                return;
            }
            let mut stderr = std::io::stderr().lock();
            let _ = stderr.write_all(line.as_bytes());
            let _ = stderr.flush();
        }
    }
}

impl Tracked {
    fn refresh_rate(&mut self) {
        let now = Instant::now();
        let done = self.status.bytes_done;
        self.samples.push_back((now, done));
        while self.samples.len() > 2 && now.duration_since(self.samples[0].0) > RATE_WINDOW {
            self.samples.pop_front();
        }
        let (then, before) = self.samples[0];
        let seconds = now.duration_since(then).as_secs_f64();
        if seconds > 0.05 {
            self.status.bytes_per_second = (done - before) as f64 / seconds;
        } else if now.duration_since(self.started).as_secs_f64() > 0.0 {
            self.status.bytes_per_second =
                done as f64 / now.duration_since(self.started).as_secs_f64();
        }
        let left = self.status.bytes_total.saturating_sub(done);
        self.status.eta_seconds = (self.status.bytes_per_second > 0.0)
            .then(|| left as f64 / self.status.bytes_per_second);
    }

    /// The text to print now, if any.
    fn line_due(&mut self, display: Display) -> Option<String> {
        let finished = self.status.state != DownloadState::Running;
        let every = match display {
            Display::Silent => return None,
            Display::Bar => Duration::from_millis(150),
            Display::Lines(every) | Display::Log(every) => every,
        };
        let now = Instant::now();
        if !finished
            && self
                .last_shown
                .is_some_and(|t| now.duration_since(t) < every)
        {
            return None;
        }
        self.last_shown = Some(now);
        let s = &self.status;
        let percent = if s.bytes_total == 0 {
            100.0
        } else {
            s.bytes_done as f64 * 100.0 / s.bytes_total as f64
        };
        let eta = s
            .eta_seconds
            .filter(|_| !finished)
            .map(|e| format!(" ETA {}", format_seconds(e)))
            .unwrap_or_default();
        let text = format!(
            "{} ({}): {} / {} ({percent:.0}%) {}/s{eta}",
            s.model,
            s.what,
            human_bytes(s.bytes_done),
            human_bytes(s.bytes_total),
            human_bytes(s.bytes_per_second as u64),
        );
        let outcome = match (s.state, &s.error) {
            (DownloadState::Done, _) => " done".to_string(),
            (DownloadState::Failed, Some(error)) => format!(" failed: {error}"),
            _ => String::new(),
        };
        Some(match display {
            Display::Bar => {
                let width = 24;
                let filled = ((percent / 100.0) * width as f64) as usize;
                let bar = format!(
                    "[{}{}]",
                    "#".repeat(filled.min(width)),
                    " ".repeat(width - filled.min(width))
                );
                format!(
                    "\r{bar} {text}{outcome}\x1b[K{}",
                    if finished { "\n" } else { "" }
                )
            }
            _ => format!("fetch {text}{outcome}\n"),
        })
    }
}

fn format_seconds(seconds: f64) -> String {
    let seconds = seconds.round() as u64;
    if seconds >= 3600 {
        format!("{}h{:02}m", seconds / 3600, seconds % 3600 / 60)
    } else if seconds >= 60 {
        format!("{}m{:02}s", seconds / 60, seconds % 60)
    } else {
        format!("{seconds}s")
    }
}

/// The handle a running download reports through. Dropped without `finish` or `fail`
/// (a panic, an early return), the download is recorded as failed.
pub struct ProgressHandle {
    progress: DownloadProgress,
    model: String,
    id: u64,
    cancel: Arc<AtomicBool>,
    ended: bool,
}

impl ProgressHandle {
    pub fn add(&self, bytes: u64) {
        self.progress
            .update(&self.model, self.id, |s| s.bytes_done += bytes);
    }

    /// Corrects the total (a server that ignores ranges sends more than was planned).
    pub fn set_total(&self, total: u64) {
        self.progress
            .update(&self.model, self.id, |s| s.bytes_total = total);
    }

    /// Whether someone called [`DownloadProgress::cancel`] for this model.
    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    pub fn finish(mut self) {
        self.ended = true;
        self.progress
            .update(&self.model, self.id, |s| s.state = DownloadState::Done);
    }

    pub fn fail(mut self, error: &str) {
        self.ended = true;
        let error = error.to_string();
        self.progress.update(&self.model, self.id, |s| {
            s.state = DownloadState::Failed;
            s.error = Some(error);
        });
    }
}

impl Drop for ProgressHandle {
    fn drop(&mut self) {
        if !self.ended {
            self.progress.update(&self.model, self.id, |s| {
                s.state = DownloadState::Failed;
                s.error = Some("interrupted".into());
            });
        }
    }
}
