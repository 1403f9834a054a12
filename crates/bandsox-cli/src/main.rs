//! The `bandsox` command: `init` and `serve` run locally; every other command is an HTTP
//! client of a running `bandsox serve` (`--url`, `BANDSOX_URL`, default
//! `http://127.0.0.1:8000`).
//!
//! Exit codes: 0 success; 1 error; 2 usage error; 3 not found; 4 conflict (wrong VM state);
//! 5 server unreachable; 6 not authenticated or forbidden; `bandsox exec` exits with the command's own exit code.

mod client;
mod commands;
mod human;
mod ws;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::client::CliError;

#[derive(Debug, Parser)]
#[command(
    name = "bandsox",
    version,
    about = "MicroVM sandboxes from OCI images",
    propagate_version = true
)]
struct Cli {
    /// Server URL for client commands.
    #[arg(
        long,
        global = true,
        env = bandsox_config::URL,
        default_value = "http://127.0.0.1:8000",
        help_heading = "Global options"
    )]
    url: String,
    /// Server host: for client commands it replaces the host of --url; for `serve` it is the
    /// address to listen on [default: 127.0.0.1].
    #[arg(long, global = true, help_heading = "Global options")]
    host: Option<String>,
    /// Server port (like --host) [default: 8000].
    #[arg(long, global = true, help_heading = "Global options")]
    port: Option<u16>,
    #[command(subcommand)]
    command: Command,
}

impl Cli {
    /// The server URL from --url, with --host/--port applied.
    fn server_url(&self) -> String {
        if self.host.is_none() && self.port.is_none() {
            return self.url.clone();
        }
        let rest = self
            .url
            .split_once("://")
            .map_or(self.url.as_str(), |(_, r)| r);
        let authority = rest.split('/').next().unwrap_or("127.0.0.1:8000");
        let (h, p) = authority.rsplit_once(':').unwrap_or((authority, "8000"));
        let host = self.host.as_deref().unwrap_or(h);
        let port = self.port.map_or_else(|| p.to_owned(), |p| p.to_string());
        format!("http://{host}:{port}")
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Prepare a storage root: kernel, initramfs, database and the default image.
    #[command(after_help = "Examples:\n  bandsox init\n  bandsox init --storage /srv/bandsox")]
    Init(commands::init::InitArgs),
    /// Run the API server.
    #[command(
        after_help = "Examples:\n  bandsox serve\n  bandsox serve --host 0.0.0.0 --port 8000 --public-url https://sandbox.example.com"
    )]
    Serve(commands::serve::ServeArgs),
    /// Create a VM from an image and print its id.
    #[command(
        after_help = "Examples:\n  bandsox create bandsox/busybox\n  bandsox create alpine:3.20 --name web --mem 512 --timeout 3600"
    )]
    Create(commands::vm::CreateArgs),
    /// Run a command in a VM and exit with its exit code.
    #[command(
        after_help = "Examples:\n  bandsox exec web -- uname -a\n  bandsox exec -it web -- sh\n  tar c . | bandsox exec -i web -- tar x -C /root\n  bandsox exec --json web -- 'ls /; exit 3'"
    )]
    Exec(commands::vm::ExecArgs),
    /// Manage VMs.
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  bandsox vm ls --status running\n  bandsox vm info web\n  bandsox vm stop web db\n  bandsox vm rm d842"
    )]
    Vm(commands::vm::VmCommand),
    /// Manage images: pull, import, list, inspect, remove.
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  bandsox image pull alpine:3.20\n  bandsox image ls\n  bandsox image rm alpine:3.20"
    )]
    Image(commands::image::ImageCommand),
    /// Build an image from a Dockerfile (in VMs): `bandsox build [-f FILE] DIR -t NAME`.
    #[command(
        after_help = "Examples:\n  bandsox build . -t myapp\n  bandsox build -f docker/Dockerfile . -t myapp:1"
    )]
    Build {
        #[command(flatten)]
        args: commands::build::BuildArgs,
        #[command(flatten)]
        common: commands::image::Common,
    },
    /// Authentication: password, API keys.
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  bandsox auth init\n  bandsox auth create-key ci\n  bandsox auth list-keys"
    )]
    Auth(commands::auth::AuthCommand),
    /// Copy files or directories between the host and a VM (`VM:/path` on one side).
    #[command(
        after_help = "Examples:\n  bandsox cp ./src web:/root/src\n  bandsox cp web:/var/log/app.log ."
    )]
    Cp(commands::cp::CpArgs),
    /// Print shell completions (bash, zsh, fish, ...).
    #[command(
        after_help = "Examples:\n  bandsox completions bash > /etc/bash_completion.d/bandsox\n  bandsox completions zsh > \"${fpath[1]}/_bandsox\""
    )]
    Completions {
        /// The shell to print completions for.
        shell: clap_complete::Shell,
    },
    /// Manage snapshots.
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  bandsox vm save web base\n  bandsox snapshot ls\n  bandsox snapshot restore base --name web2\n  bandsox snapshot rm base"
    )]
    Snapshot(commands::snapshot::SnapshotCommand),
    /// Manage templates (paused, agent-ready VMs that creates restore from).
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  bandsox template ls\n  bandsox template build bandsox/busybox --mem 256"
    )]
    Template(commands::template::TemplateCommand),
    /// List a VM's durable background commands.
    #[command(after_help = "Examples:\n  bandsox commands web")]
    Commands(commands::durable::CommandsArgs),
    /// Print (and with --follow, follow) a durable command's output.
    #[command(after_help = "Examples:\n  bandsox logs web cmd-1 --follow")]
    Logs(commands::durable::LogsArgs),
    /// Open an interactive shell in a VM (raw TTY, resizes follow the window).
    #[command(after_help = "Examples:\n  bandsox terminal web")]
    Terminal {
        /// VM id, unique id prefix (4+ characters) or name.
        vm: String,
    },
    /// Boot a stopped VM again.
    #[command(after_help = "Examples:\n  bandsox start web")]
    Start {
        /// VM id, unique id prefix (4+ characters) or name.
        vm: String,
    },
    /// Remove bandsox network namespaces, interfaces and nftables rules that belong to no
    /// live VM (run as root on the server's host; never touches anything not named by bandsox).
    #[command(after_help = "Examples:\n  sudo bandsox cleanup")]
    Cleanup(commands::cleanup::CleanupArgs),
    /// Stop and start a VM.
    #[command(after_help = "Examples:\n  bandsox restart web")]
    Restart {
        /// VM id, unique id prefix (4+ characters) or name.
        vm: String,
    },
    /// Live CPU, memory, disk and network use of VMs (like `docker stats`).
    #[command(after_help = "Examples:\n  bandsox stats\n  bandsox stats web db")]
    Stats(commands::stats::StatsArgs),
    /// The cluster this server belongs to (`serve --cluster`): its nodes.
    #[command(subcommand)]
    #[command(after_help = "Examples:\n  bandsox cluster nodes\n  bandsox cluster nodes --json")]
    Cluster(commands::cluster::ClusterCommand),
    /// Add seconds to a VM's timeout (a VM without one is refused: see `timeout`).
    #[command(after_help = "Examples:\n  bandsox extend web 600")]
    Extend {
        /// VM id, unique id prefix (4+ characters) or name.
        vm: String,
        /// Seconds to add (1 to 86400).
        seconds: u64,
    },
    /// Set a VM's timeout: SECONDS from now (0 clears it), and what happens then.
    #[command(
        after_help = "Examples:\n  bandsox timeout web 3600\n  bandsox timeout web 600 --action delete\n  bandsox timeout web 0"
    )]
    Timeout {
        /// VM id, unique id prefix (4+ characters) or name.
        vm: String,
        /// Seconds from now (0 to 86400; 0 = never).
        seconds: u64,
        /// What happens at the timeout: stop, pause or delete [default: the VM's current one].
        #[arg(long, value_parser = ["stop", "pause", "delete"])]
        action: Option<String>,
    },
}

fn main() -> ExitCode {
    // A reader that goes away (`bandsox vm ls | head -1`, `--help | head`) ends the command
    // quietly, as it ends `cat`, instead of a panic in `println!`. The server keeps Rust's
    // default (SIGPIPE ignored): a client hanging up must never kill it.
    // SAFETY: setting a signal disposition before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    if matches!(cli.command, Command::Serve(_)) {
        // SAFETY: as above, still before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        }
    }
    let url = cli.server_url();
    let result = match cli.command {
        Command::Init(a) => commands::init::run(a),
        Command::Serve(a) => commands::serve::run(a, cli.host.as_deref(), cli.port),
        Command::Cleanup(a) => commands::cleanup::run(a),
        Command::Create(a) => commands::vm::create(&url, a),
        Command::Exec(a) => commands::vm::exec(&url, a),
        Command::Vm(c) => commands::vm::run(&url, c),
        Command::Image(c) => commands::image::run(&url, c),
        Command::Build { args, common } => commands::build::run(&url, args, common),
        Command::Snapshot(c) => commands::snapshot::run(&url, c),
        Command::Template(c) => commands::template::run(&url, c),
        Command::Auth(c) => commands::auth::run(&url, c),
        Command::Cp(a) => commands::cp::run(&url, a),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "bandsox",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Commands(a) => commands::durable::list(&url, a),
        Command::Logs(a) => commands::durable::logs(&url, a),
        Command::Terminal { vm } => commands::terminal::run(&url, &vm),
        Command::Start { vm } => commands::vm::action(&url, &vm, "start"),
        Command::Restart { vm } => commands::vm::action(&url, &vm, "restart"),
        Command::Stats(a) => commands::stats::run(&url, a),
        Command::Cluster(c) => commands::cluster::run(&url, c),
        Command::Extend { vm, seconds } => commands::vm::extend(&url, &vm, seconds),
        Command::Timeout {
            vm,
            seconds,
            action,
        } => commands::vm::set_timeout(&url, &vm, seconds, action),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            report(&e);
            ExitCode::from(e.exit_code)
        }
    }
}

/// Prints an error as `error: ...` and, when there is one, `hint: ...` on stderr.
pub fn report(e: &CliError) {
    eprintln!("error: {}", e.message);
    if let Some(hint) = &e.hint {
        eprintln!("hint: {hint}");
    }
}

/// Shorthand for command results: an exit code or a one-line error.
pub type CliResult = Result<ExitCode, CliError>;
