//! `bandsox snapshot list|info|delete|restore|rename`.

use std::process::ExitCode;
use std::time::Duration;

use bandsox_api::{CreateVmResponse, Renamed, SnapshotInfo, StatusResponse};
use clap::Subcommand;

use crate::client::{segment, Client};
use crate::CliResult;

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// List snapshots.
    #[command(visible_alias = "ls")]
    #[command(after_help = "Examples:\n  bandsox snapshot ls\n  bandsox snapshot ls --json")]
    List {
        /// Print the list as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one snapshot.
    #[command(after_help = "Examples:\n  bandsox snapshot info base")]
    Info {
        /// Snapshot id, unique id prefix (4+ characters) or name.
        snapshot: String,
        /// Print it as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete snapshots (VMs restored from them are not affected).
    #[command(visible_alias = "rm")]
    #[command(after_help = "Examples:\n  bandsox snapshot rm base old")]
    Delete {
        /// Snapshot ids, id prefixes or names.
        #[arg(required = true)]
        snapshots: Vec<String>,
    },
    /// Start a new VM from a snapshot; prints its id.
    #[command(
        after_help = "Examples:\n  bandsox snapshot restore base\n  bandsox snapshot restore base --name web2"
    )]
    Restore {
        /// Snapshot id, unique id prefix or name.
        snapshot: String,
        /// Name of the new VM.
        #[arg(long)]
        name: Option<String>,
        /// Accepted for BandSox compatibility.
        #[arg(long)]
        enable_networking: bool,
    },
    /// Rename a snapshot (names are labels).
    #[command(after_help = "Examples:\n  bandsox snapshot rename base golden")]
    Rename {
        /// Snapshot id, unique id prefix or name.
        snapshot: String,
        /// The new name.
        name: String,
    },
}

pub fn run(url: &str, c: SnapshotCommand) -> CliResult {
    let client = Client::new(url);
    match c {
        SnapshotCommand::List { json } => {
            let snaps: Vec<SnapshotInfo> = client.get("/api/snapshots")?;
            if json {
                println!("{}", serde_json::to_string(&snaps).unwrap_or_default());
            } else {
                println!(
                    "{:<36}  {:<24}  {:<36}  {:>9}  CREATED",
                    "ID", "NAME", "SOURCE VM", "SIZE MIB"
                );
                for s in snaps {
                    println!(
                        "{:<36}  {:<24}  {:<36}  {:>9}  {}",
                        s.id,
                        s.name.chars().take(24).collect::<String>(),
                        s.source_vm_id,
                        s.size_bytes >> 20,
                        crate::human::relative(s.created_at)
                    );
                }
            }
        }
        SnapshotCommand::Info { snapshot, json } => {
            let s: SnapshotInfo = client.get(&format!("/api/snapshots/{}", segment(&snapshot)))?;
            if json {
                println!("{}", serde_json::to_string(&s).unwrap_or_default());
            } else {
                println!("id          {}", s.id);
                println!("name        {}", s.name);
                println!("source vm   {}", s.source_vm_id);
                println!("image       {}", s.image);
                println!("vcpu        {}", s.vcpu);
                println!("mem_mib     {}", s.mem_mib);
                println!("size        {} MiB", s.size_bytes >> 20);
            }
        }
        SnapshotCommand::Delete { snapshots } => {
            return crate::commands::vm::each(&snapshots, |snapshot| {
                let r: StatusResponse =
                    client.delete(&format!("/api/snapshots/{}", segment(snapshot)))?;
                println!("{}", r.status);
                Ok(())
            })
        }
        SnapshotCommand::Restore {
            snapshot,
            name,
            enable_networking: _,
        } => {
            let r: CreateVmResponse = client.post(
                &format!("/api/snapshots/{}/restore", segment(&snapshot)),
                &serde_json::json!({ "name": name }),
                Duration::from_secs(600),
            )?;
            println!("{}", r.id);
        }
        SnapshotCommand::Rename { snapshot, name } => {
            let r: Renamed = client.put(
                &format!("/api/snapshots/{}/name", segment(&snapshot)),
                &serde_json::json!({ "name": name }),
            )?;
            println!("{}", r.name);
        }
    }
    Ok(ExitCode::SUCCESS)
}
