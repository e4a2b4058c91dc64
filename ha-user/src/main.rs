//! `hasync`: the agent and its command line.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use hasync::{
    config::{self, schema::LogFormat},
    control::{Request, Response, StateFilter, client},
};
use tracing_subscriber::{EnvFilter, layer::SubscriberExt as _, util::SubscriberInitExt as _};

#[derive(Parser)]
#[command(
    name = "hasync",
    version,
    about = "Conntrack state synchronisation and high availability"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the agent in the foreground, in the current network namespace.
    Run {
        #[arg(long, short, env = "HASYNC_CONFIG")]
        config: PathBuf,
        /// Overrides `agent.log_level` (trace, debug, info, warn, error) or a
        /// tracing filter such as `hasync=debug`.
        #[arg(long)]
        log_level: Option<String>,
    },
    /// Check a configuration file and print every error with its line and column.
    CheckConfig {
        #[arg(long, short, env = "HASYNC_CONFIG")]
        config: PathBuf,
    },
    /// Print the configuration reference (every block and attribute).
    ConfigReference,
    /// Role, peer, sync state, counters and the failover timeline of the running agent.
    Status {
        /// The agent's answer as JSON (for scripts).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Make this node primary now; the peer steps down.
    Promote {
        #[command(flatten)]
        target: Target,
    },
    /// Maintenance: give up the primary role and do not take it back until `resume`.
    Demote {
        #[command(flatten)]
        target: Target,
    },
    /// Leave maintenance (or a promotion): automatic election resumes.
    Resume {
        #[command(flatten)]
        target: Target,
    },
    /// This node's connection table: counts and entries, like `conntrack -L`.
    States {
        #[command(flatten)]
        filter: Filter,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// The entries this node holds on behalf of its peer.
    PeerStates {
        #[command(flatten)]
        filter: Filter,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Ask the peer for its whole table now (bulk resync).
    Resync {
        #[command(flatten)]
        target: Target,
    },
    /// Remove the entries held for the peer from this node's kernel table.
    Flush {
        #[command(flatten)]
        target: Target,
    },
    /// Certificates for the replication channel: a private CA and node certificates.
    Cert {
        #[command(subcommand)]
        cmd: hasync::cli::cert::CertCmd,
    },
}

/// Which entries to list.
#[derive(clap::Args)]
struct Filter {
    /// Protocol name or number (tcp, udp, icmp, 132, ...).
    #[arg(long, short)]
    proto: Option<String>,
    /// An address in either direction.
    #[arg(long, short)]
    addr: Option<std::net::IpAddr>,
    /// A port in either direction.
    #[arg(long)]
    port: Option<u16>,
    /// List at most this many entries (the counts cover all).
    #[arg(long, default_value_t = 100)]
    limit: usize,
}

impl Filter {
    fn into_request(self) -> StateFilter {
        StateFilter {
            proto: self.proto,
            addr: self.addr,
            port: self.port,
            limit: Some(self.limit),
        }
    }
}

/// Which agent to talk to.
#[derive(clap::Args)]
struct Target {
    /// The control socket (default: `agent.control_socket` of --config, else
    /// /run/hasync/hasync.sock).
    #[arg(long, env = "HASYNC_SOCKET")]
    socket: Option<PathBuf>,
    /// Read the control socket path from this configuration file.
    #[arg(long, short, env = "HASYNC_CONFIG")]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::CheckConfig { config } => match config::load(&config) {
            Ok(_) => {
                println!("{}: configuration is valid", config.display());
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                eprintln!("{}: {} error(s)", config.display(), errors.0.len());
                ExitCode::from(1)
            }
        },
        Cmd::ConfigReference => {
            print!("{}", config::reference());
            ExitCode::SUCCESS
        }
        Cmd::Status { json, target } => control(&target, Request::Status, json),
        Cmd::Promote { target } => control(&target, Request::Promote, false),
        Cmd::Demote { target } => control(&target, Request::Demote, false),
        Cmd::Resume { target } => control(&target, Request::Resume, false),
        Cmd::States {
            filter,
            json,
            target,
        } => control(
            &target,
            Request::States {
                filter: filter.into_request(),
            },
            json,
        ),
        Cmd::PeerStates {
            filter,
            json,
            target,
        } => control(
            &target,
            Request::PeerStates {
                filter: filter.into_request(),
            },
            json,
        ),
        Cmd::Resync { target } => control(&target, Request::Resync, false),
        Cmd::Flush { target } => control(&target, Request::Flush, false),
        Cmd::Cert { cmd } => hasync::cli::cert::main(cmd),
        Cmd::Run { config, log_level } => match run(&config, log_level.as_deref()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("hasync: {e:#}");
                ExitCode::from(1)
            }
        },
    }
}

/// Sends one request to the running agent and prints its answer.
fn control(target: &Target, request: Request, json: bool) -> ExitCode {
    let path = match hasync::cli::socket_path(target.socket.as_deref(), target.config.as_deref()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("hasync: {e}");
            return ExitCode::from(2);
        }
    };
    match client::call(&path, &request) {
        Ok(Response::Status(v)) if json => {
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Ok(Response::Status(v)) => {
            let text = match &request {
                Request::States { .. } => hasync::cli::states::render(&v, false),
                Request::PeerStates { .. } => hasync::cli::states::render(&v, true),
                _ => hasync::cli::status::render(&v),
            };
            print!("{text}");
            ExitCode::SUCCESS
        }
        Ok(Response::Done { message }) => {
            println!("{message}");
            ExitCode::SUCCESS
        }
        Ok(Response::Error { message }) => {
            eprintln!("hasync: {message}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("hasync: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(path: &std::path::Path, log_level: Option<&str>) -> anyhow::Result<()> {
    let cfg = match config::load(path) {
        Ok(c) => c,
        Err(errors) => anyhow::bail!("invalid configuration:\n{errors}"),
    };
    let filter = match log_level {
        Some(l) => EnvFilter::try_new(l).with_context(|| format!("--log-level {l}"))?,
        None => EnvFilter::try_from_env("HASYNC_LOG")
            .unwrap_or_else(|_| EnvFilter::new(cfg.agent.log_level.as_str())),
    };
    // The filter sits behind a reload handle: SIGHUP can change the level live.
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match cfg.agent.log_format {
        LogFormat::Json => registry.with(fmt.json()).init(),
        LogFormat::Text => registry.with(fmt).init(),
    }
    let set_log_level = move |level: &str| -> Result<(), String> {
        let f = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        handle.reload(f).map_err(|e| e.to_string())
    };
    let opts = hasync::agent::RunOptions {
        config_path: Some(path.to_path_buf()),
        set_log_level: Some(Box::new(set_log_level)),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("hasync-ctl")
        .build()
        .context("starting the runtime")?;
    Ok(runtime.block_on(hasync::agent::run(cfg, opts))?)
}
