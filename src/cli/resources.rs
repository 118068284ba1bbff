//! `exo resources list | health | reset | export`: the resources of a running node, over
//! its admin API.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::Value;

#[derive(Debug, Args)]
pub struct ResourcesArgs {
    /// The node's API.
    #[arg(
        long,
        env = "EXO_NODE",
        default_value = "http://127.0.0.1:52415",
        global = true
    )]
    pub node: String,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// The node's API key (Bearer), for a node started with --api-key.
    #[arg(long, env = "EXO_API_KEY", global = true, hide_env_values = true)]
    pub api_key: Option<String>,
    /// The node's admin key (Bearer; sent instead of --api-key), for a node started with
    /// --admin-key.
    #[arg(long, env = "EXO_ADMIN_KEY", global = true, hide_env_values = true)]
    pub admin_key: Option<String>,
    /// Read the API key from this file (its first key; readable by its owner only).
    #[arg(long, env = "EXO_API_KEY_FILE", global = true)]
    pub api_key_file: Option<std::path::PathBuf>,
    /// Read the admin key from this file, like --api-key-file.
    #[arg(long, env = "EXO_ADMIN_KEY_FILE", global = true)]
    pub admin_key_file: Option<std::path::PathBuf>,
    #[command(subcommand)]
    pub command: ResourcesCommand,
}

#[derive(Debug, Subcommand)]
pub enum ResourcesCommand {
    /// Every live resource with its state.
    List,
    /// Run every health check now.
    Health,
    /// Reset one resource (re-initialize it).
    Reset {
        /// The resource id (as `list` shows it).
        id: String,
        /// Only a resource of this type.
        #[arg(long = "type")]
        kind: Option<String>,
    },
    /// Write the full report (JSON, docs/resource-report.md) to a file.
    Export {
        #[arg(long)]
        output: PathBuf,
    },
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(3))
        .timeout(Duration::from_secs(120))
        .build()
}

/// Calls the node; an error body (even with a 5xx) is returned as JSON for the caller.
fn call(request: ureq::Request, node: &str) -> anyhow::Result<(u16, Value)> {
    match request.call() {
        Ok(response) => Ok((response.status(), response.into_json()?)),
        Err(ureq::Error::Status(code, response)) => {
            let body = response.into_json().unwrap_or(Value::Null);
            Ok((code, body))
        }
        Err(error) => bail!("cannot reach the node at {node}: {error}"),
    }
}

pub async fn run(args: ResourcesArgs) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || run_blocking(args)).await?
}

fn run_blocking(args: ResourcesArgs) -> anyhow::Result<()> {
    let base = args.node.trim_end_matches('/').to_string();
    let agent = agent();
    let admin_key =
        super::shared::client_key(args.admin_key.as_deref(), args.admin_key_file.as_deref())?;
    let api_key = super::shared::client_key(args.api_key.as_deref(), args.api_key_file.as_deref())?;
    let authorization = super::shared::bearer(admin_key.as_deref().or(api_key.as_deref()));
    let call = |request: ureq::Request, node: &str| match &authorization {
        Some(value) => call(request.set("authorization", value), node),
        None => call(request, node),
    };
    match &args.command {
        ResourcesCommand::List => {
            let (code, body) = call(agent.get(&format!("{base}/v1/resources")), &base)?;
            ensure_ok(code, &body)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&body)?);
            } else {
                let rows: Vec<[String; 6]> = items(&body["resources"])
                    .map(|r| {
                        [
                            text(&r["id"]),
                            text(&r["type"]),
                            text(&r["state"]),
                            text(&r["stats"]["errors"]),
                            millis(&r["stats"]["last_initialize_ms"]),
                            text(&r["last_error"]),
                        ]
                    })
                    .collect();
                print_table(
                    ["ID", "TYPE", "STATE", "ERRORS", "INIT_MS", "LAST ERROR"],
                    &rows,
                );
            }
        }
        ResourcesCommand::Health => {
            let (code, body) = call(agent.get(&format!("{base}/v1/resources/health")), &base)?;
            ensure_ok(code, &body)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&body)?);
            } else {
                let rows: Vec<[String; 6]> = items(&body["results"])
                    .map(|r| {
                        [
                            text(&r["id"]),
                            text(&r["type"]),
                            yes_no(&r["checked"]),
                            yes_no(&r["healthy"]),
                            text(&r["state"]),
                            text(&r["message"]),
                        ]
                    })
                    .collect();
                print_table(
                    ["ID", "TYPE", "CHECKED", "HEALTHY", "STATE", "MESSAGE"],
                    &rows,
                );
            }
        }
        ResourcesCommand::Reset { id, kind } => {
            let mut url = format!("{base}/v1/resources/{}/reset", encode(id));
            if let Some(kind) = kind {
                url.push_str(&format!("?type={}", encode(kind)));
            }
            // JSON, as every admin POST must be (no web page can send one unasked).
            let request = agent.post(&url).set("content-type", "application/json");
            let (code, body) = call(request, &base)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&body)?);
            }
            ensure_ok(code, &body)?;
            if !args.json {
                println!(
                    "{} ({}) reset: now {}",
                    text(&body["resource"]["id"]),
                    text(&body["resource"]["type"]),
                    text(&body["resource"]["state"])
                );
            }
        }
        ResourcesCommand::Export { output } => {
            let (code, body) = call(agent.get(&format!("{base}/v1/resources/report")), &base)?;
            ensure_ok(code, &body)?;
            std::fs::write(output, serde_json::to_string_pretty(&body)?)
                .with_context(|| format!("cannot write {}", output.display()))?;
            println!("{}", output.display());
        }
    }
    Ok(())
}

fn ensure_ok(code: u16, body: &Value) -> anyhow::Result<()> {
    if (200..300).contains(&code) {
        return Ok(());
    }
    let message = body["error"]["message"]
        .as_str()
        .or_else(|| body["error"].as_str())
        .map(str::to_string)
        .unwrap_or_else(|| body.to_string());
    bail!("the node answered {code}: {message}")
}

fn items(value: &Value) -> impl Iterator<Item = &Value> {
    value.as_array().into_iter().flatten()
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn millis(value: &Value) -> String {
    value
        .as_f64()
        .map_or_else(|| "-".into(), |ms| format!("{ms:.1}"))
}

fn yes_no(value: &Value) -> String {
    if value.as_bool() == Some(true) {
        "yes".into()
    } else {
        "no".into()
    }
}

/// Percent-encodes a path segment or query value.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

fn print_table<const N: usize>(header: [&str; N], rows: &[[String; N]]) {
    let mut widths = header.map(str::len);
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row.iter()).take(N - 1) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == N {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}
