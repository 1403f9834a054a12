//! `bandsox template ls|build|rm`.

use std::process::ExitCode;
use std::time::Duration;

use bandsox_api::{BuildTemplateRequest, StatusResponse, TemplateInfo};
use clap::Subcommand;

use crate::client::{segment, Client};
use crate::CliResult;

#[derive(Debug, Subcommand)]
pub enum TemplateCommand {
    /// List templates.
    #[command(alias = "list")]
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Build the template of an image and shape (prints its id; an existing one is reused).
    Build {
        image: String,
        #[arg(long, default_value_t = 1)]
        vcpu: u32,
        #[arg(long = "mem", default_value_t = 128)]
        mem_mib: u32,
        #[arg(long = "disk", default_value_t = 4096)]
        disk_size_mib: u64,
        /// For VMs created with --no-network.
        #[arg(long)]
        no_network: bool,
    },
    /// Delete a template (VMs made from it are not affected).
    #[command(alias = "delete")]
    Rm {
        /// Template id (see `template ls`).
        template: String,
    },
}

pub fn run(url: &str, c: TemplateCommand) -> CliResult {
    let client = Client::new(url);
    match c {
        TemplateCommand::Ls { json } => {
            let ts: Vec<TemplateInfo> = client.get("/api/templates")?;
            if json {
                println!("{}", serde_json::to_string(&ts).unwrap_or_default());
            } else {
                println!(
                    "{:<32}  {:<28}  {:>4}  {:>7}  {:>8}  {:<3}  {:<7}  BUILT",
                    "ID", "IMAGE", "VCPU", "MEM MIB", "DISK MIB", "NET", "CURRENT"
                );
                for t in ts {
                    println!(
                        "{:<32}  {:<28}  {:>4}  {:>7}  {:>8}  {:<3}  {:<7}  {}",
                        t.id,
                        t.image.chars().take(28).collect::<String>(),
                        t.vcpu,
                        t.mem_mib,
                        t.disk_size_mib,
                        if t.enable_networking { "on" } else { "off" },
                        if t.current { "yes" } else { "stale" },
                        crate::human::relative(t.created_at)
                    );
                }
            }
        }
        TemplateCommand::Build {
            image,
            vcpu,
            mem_mib,
            disk_size_mib,
            no_network,
        } => {
            let t: TemplateInfo = client.post(
                "/api/templates",
                &BuildTemplateRequest {
                    image,
                    vcpu,
                    mem_mib,
                    disk_size_mib,
                    enable_networking: !no_network,
                },
                Duration::from_secs(900),
            )?;
            println!("{}", t.id);
        }
        TemplateCommand::Rm { template } => {
            let r: StatusResponse =
                client.delete(&format!("/api/templates/{}", segment(&template)))?;
            println!("{}", r.status);
        }
    }
    Ok(ExitCode::SUCCESS)
}
