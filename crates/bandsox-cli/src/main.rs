//! The `bandsox` command: `init` and `serve` run locally; every other command is an HTTP
//! client of a running `bandsox serve` (`--url`, `BANDSOX_URL`, default
//! `http://127.0.0.1:8000`).
//!
//! Exit codes: 0 success; 1 error; 2 usage error; 3 not found; 4 conflict (wrong VM state);
//! 5 server unreachable; `bandsox exec` exits with the command's own exit code.

mod client;
mod commands;

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
        env = "BANDSOX_URL",
        default_value = "http://127.0.0.1:8000"
    )]
    url: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Prepare a storage root: kernel, initramfs, database and the default image.
    Init(commands::init::InitArgs),
    /// Run the API server.
    Serve(commands::serve::ServeArgs),
    /// Create a VM from an image and print its id.
    Create(commands::vm::CreateArgs),
    /// Run a command in a VM and exit with its exit code.
    Exec(commands::vm::ExecArgs),
    /// Manage VMs.
    #[command(subcommand)]
    Vm(commands::vm::VmCommand),
    /// Manage images: pull, import, list, inspect, remove.
    #[command(subcommand)]
    Image(commands::image::ImageCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Init(a) => commands::init::run(a),
        Command::Serve(a) => commands::serve::run(a),
        Command::Create(a) => commands::vm::create(&cli.url, a),
        Command::Exec(a) => commands::vm::exec(&cli.url, a),
        Command::Vm(c) => commands::vm::run(&cli.url, c),
        Command::Image(c) => commands::image::run(&cli.url, c),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", e.message);
            if let Some(hint) = &e.hint {
                eprintln!("hint: {hint}");
            }
            ExitCode::from(e.exit_code)
        }
    }
}

/// Shorthand for command results: an exit code or a one-line error.
pub type CliResult = Result<ExitCode, CliError>;
