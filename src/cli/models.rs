//! `exo models list | fetch`.

use clap::{Args, Subcommand};

use crate::catalog::{Catalog, default_models_dir, fetch_from_hub, verify_file};

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// The models of the registry, and whether each is fetched.
    List(ListArgs),
    /// Fetch a model from the Hugging Face Hub into the models directory.
    Fetch(FetchArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[arg(long, env = "EXO_MODELS_DIR")]
    pub models_dir: Option<std::path::PathBuf>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct FetchArgs {
    /// The model id.
    pub id: String,
    #[arg(long, env = "EXO_MODELS_DIR")]
    pub models_dir: Option<std::path::PathBuf>,
}

pub async fn run(command: ModelsCommand) -> anyhow::Result<()> {
    let catalog = Catalog::builtin();
    match command {
        ModelsCommand::List(args) => {
            let dir = args.models_dir.unwrap_or_else(default_models_dir);
            let rows: Vec<serde_json::Value> = catalog
                .models
                .iter()
                .map(|m| {
                    let path = dir.join(&m.id).join(&m.file.name);
                    serde_json::json!({
                        "id": m.id,
                        "name": m.name,
                        "architecture": m.architecture,
                        "layers": m.layers,
                        "format": m.format,
                        "fetched": path.is_file(),
                        "path": path.display().to_string(),
                        "default": m.id == catalog.default,
                    })
                })
                .collect();
            if args.json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!(
                    "{:<20} {:<8} {:>6}  {:<8} NAME",
                    "ID", "ARCH", "LAYERS", "FETCHED"
                );
                for row in &rows {
                    println!(
                        "{:<20} {:<8} {:>6}  {:<8} {}{}",
                        row["id"].as_str().unwrap_or_default(),
                        row["architecture"].as_str().unwrap_or_default(),
                        row["layers"],
                        if row["fetched"].as_bool() == Some(true) {
                            "yes"
                        } else {
                            "no"
                        },
                        row["name"].as_str().unwrap_or_default(),
                        if row["default"].as_bool() == Some(true) {
                            " (default)"
                        } else {
                            ""
                        },
                    );
                }
            }
            Ok(())
        }
        ModelsCommand::Fetch(args) => {
            let dir = args.models_dir.unwrap_or_else(default_models_dir);
            let entry = catalog.require(&args.id)?.clone();
            let path = tokio::task::spawn_blocking(move || fetch_from_hub(&entry, &dir)).await??;
            let entry = catalog.require(&args.id)?;
            verify_file(&path, &entry.file.sha256)?;
            println!("{}", path.display());
            Ok(())
        }
    }
}
