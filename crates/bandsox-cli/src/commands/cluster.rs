//! `bandsox cluster nodes`.

use std::process::ExitCode;

use bandsox_api::ClusterNodesResponse;
use clap::Subcommand;

use crate::client::Client;
use crate::CliResult;

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// List the cluster's nodes and whether each is up.
    #[command(alias = "ls")]
    Nodes {
        /// Print the server's JSON answer.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(url: &str, c: ClusterCommand) -> CliResult {
    let client = Client::new(url);
    match c {
        ClusterCommand::Nodes { json } => {
            let r: ClusterNodesResponse = client.get("/api/cluster/nodes")?;
            if json {
                println!("{}", serde_json::to_string(&r).unwrap_or_default());
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<20}  {:<5}  {:<28}  {:>9}  {:>5}  {:>8}  {:<11}",
                "NAME", "STATE", "ADVERTISE", "VMS", "VCPUS", "MEM MIB", "BACKEND"
            );
            for n in r.nodes {
                let name = if n.name == r.node {
                    format!("{} *", n.name)
                } else {
                    n.name
                };
                println!(
                    "{:<20}  {:<5}  {:<28}  {:>9}  {:>5}  {:>8}  {:<11}",
                    name,
                    n.state,
                    n.advertise,
                    format!("{}/{}", n.vms, n.max_vms),
                    n.vcpus,
                    n.mem_mib,
                    n.backend
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
