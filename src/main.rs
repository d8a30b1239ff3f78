//! The `moco-server` command line: serve the dashboard, train headless, inspect the machine.
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "moco-server",
    version,
    about = "Momentum Contrast training server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the dashboard and the JSON API.
    Serve {
        #[arg(long, env = "MOCO_HOST", default_value = "127.0.0.1")]
        host: String,
        #[arg(long, env = "MOCO_PORT", default_value_t = 8000)]
        port: u16,
        /// Runs, checkpoints, datasets and the SQLite database live here.
        #[arg(long, env = "MOCO_DATA_DIR", default_value = "./moco-data")]
        data_dir: PathBuf,
        /// Access token required for changes (create, cancel, resume, delete). Required whenever
        /// the server listens beyond loopback: one is generated and printed if none is given.
        #[arg(long, env = "MOCO_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Queue runs left interrupted (by a shutdown or a crash) again at start.
        #[arg(long, env = "MOCO_AUTO_RESUME")]
        auto_resume: bool,
        /// Runs trained at the same time on one device.
        #[arg(long, env = "MOCO_RUNS_PER_DEVICE", default_value_t = 1,
              value_parser = clap::value_parser!(u16).range(1..=64))]
        runs_per_device: u16,
        /// Let download requests name their own address and MD5 (`url`, `md5`). Off by default:
        /// it lets any client make the server fetch from wherever it can reach. Mirrors chosen
        /// by the operator go in MOCO_FETCH_MIRROR_<NAME> / MOCO_FETCH_MD5_<NAME> instead
        /// (NAME: CIFAR10, CIFAR100, STL10).
        #[arg(long, env = "MOCO_ALLOW_FETCH_SOURCE")]
        allow_fetch_source: bool,
    },
    /// Print versions, CUDA availability and devices.
    Doctor,
    /// Train headless with a progress bar (or --json lines); Ctrl-C saves a checkpoint.
    Train(moco_server::cli_train::TrainArgs),
    /// Train a grid of runs (a base config with one or two fields varied, and seeds, or a
    /// built-in recipe of the MoCo paper's ablations) one after another, then print the table.
    Sweep(moco_server::cli_sweep::SweepArgs),
    /// Turn a full checkpoint into an encoder file with torchvision's keys.
    Export(moco_server::cli_train::ExportArgs),
    /// Evaluate a checkpoint or encoder: linear classification on frozen features, or kNN.
    Eval(moco_server::eval::cli::EvalArgs),
    /// Download and inspect datasets.
    Data(moco_server::cli_data::DataArgs),
    /// Write a PNG grid of augmented views (original | view 1 | view 2).
    AugmentPreview(moco_server::cli_data::AugmentPreviewArgs),
    /// List every run setting: section, type, range, each preset's default and meaning (a
    /// Markdown table, as in the README), or the JSON schema with --json.
    Settings {
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve {
            host,
            port,
            data_dir,
            token,
            auto_resume,
            runs_per_device,
            allow_fetch_source,
        } => moco_server::server::fetch_jobs::FetchPolicy::from_env(allow_fetch_source).and_then(
            |fetch| {
                serve(moco_server::server::ServerConfig {
                    host,
                    port,
                    data_dir,
                    token,
                    auto_resume,
                    runs_per_device: runs_per_device as usize,
                    fetch,
                })
            },
        ),
        Command::Doctor => doctor(),
        Command::Train(args) => moco_server::cli_train::train(args),
        Command::Export(args) => moco_server::cli_train::export(args),
        Command::Sweep(args) => moco_server::cli_sweep::sweep(args),
        Command::Eval(args) => moco_server::eval::cli::eval(args),
        Command::Data(args) => moco_server::cli_data::data(args),
        Command::AugmentPreview(args) => moco_server::cli_data::augment_preview(args),
        Command::Settings { json } => settings(json),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config: moco_server::server::ServerConfig) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(async {
        let server = moco_server::server::bind(&config).await?;
        let addr = server.local_addr();
        println!("moco-server listening on http://{addr}/");
        println!("data directory: {}", server.state.data_dir.display());
        let auth = &server.state.auth;
        if auth.generated {
            println!(
                "access token (send `Authorization: Bearer <token>` to make changes): {}",
                auth.token.as_deref().unwrap_or_default()
            );
        } else if auth.token.is_some() {
            println!("changes require the access token given with --token / MOCO_TOKEN");
        }
        server.serve(stop_signal()).await?;
        tracing::debug!("server stopped");
        Ok(ExitCode::SUCCESS)
    });
    // A training thread that did not stop in the grace period must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

/// Ctrl-C or SIGTERM.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn settings(json: bool) -> anyhow::Result<ExitCode> {
    use moco_server::config::settings;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&settings::openapi_schemas())?
        );
    } else {
        print!("{}", settings::markdown_table());
    }
    Ok(ExitCode::SUCCESS)
}

fn doctor() -> anyhow::Result<ExitCode> {
    // A failing libtorch call panics inside tch; turn that into a sentence and a non-zero exit.
    match std::panic::catch_unwind(|| {
        let report = moco_server::doctor::report();
        let probe = tch::Tensor::from_slice(&[1.0f32, 2.0, 3.0]).sum(tch::Kind::Float);
        (report, f64::try_from(probe).ok())
    }) {
        Ok((report, Some(sum))) if (sum - 6.0).abs() < 1e-6 => {
            print!("{report}");
            println!("status      libtorch works (a test tensor summed to {sum})");
            Ok(ExitCode::SUCCESS)
        }
        _ => {
            eprintln!(
                "libtorch could not be loaded or did not compute correctly; run `make run` to \
                 install torch==2.11.0 into .venv, or check that the libtorch next to this binary \
                 is 2.11.0"
            );
            Ok(ExitCode::from(2))
        }
    }
}
