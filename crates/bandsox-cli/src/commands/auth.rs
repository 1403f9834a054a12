//! `bandsox auth init|set-password` (local, on the storage root) and
//! `bandsox auth create-key|list-keys|revoke-key` (over HTTP).

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use bandsox_core::auth::{generate_password, ApiKeyInfo};
use bandsox_core::store::Store;
use clap::Subcommand;

use super::{core_error, storage};
use crate::client::{credentials_path, segment, CliError, Client};
use crate::CliResult;

#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Turn authentication on: set a random admin password and create a first API key. Both
    /// are printed once.
    Init {
        #[arg(long)]
        storage: Option<PathBuf>,
        /// Save the key to ~/.bandsox/credentials (mode 0600) for this CLI.
        #[arg(long)]
        save: bool,
    },
    /// Set the admin password (read from stdin; at least 8 characters). Ends all sessions.
    SetPassword {
        #[arg(long)]
        storage: Option<PathBuf>,
    },
    /// Create an API key; it is printed once.
    CreateKey {
        name: String,
        /// Save the key to ~/.bandsox/credentials.
        #[arg(long)]
        save: bool,
    },
    /// List API keys (never their secrets).
    ListKeys {
        #[arg(long)]
        json: bool,
    },
    /// Revoke an API key.
    RevokeKey {
        /// Key id (see `auth list-keys`).
        key_id: String,
    },
}

pub fn run(url: &str, c: AuthCommand) -> CliResult {
    match c {
        AuthCommand::Init { storage: s, save } => {
            let storage = storage(s)?;
            let (_lock, store) = open_store(&storage)?;
            if store.auth_enabled().map_err(core_error)? {
                return Err(CliError::new("authentication is already initialised")
                    .with_hint("change the password with `bandsox auth set-password`"));
            }
            let password = generate_password();
            store.set_password(&password).map_err(core_error)?;
            let key = store.create_api_key("initial-key").map_err(core_error)?;
            println!("admin password  {password}");
            println!("API key         {}  (id {})", key.key, key.info.id);
            println!("Both are shown only now. Restart `bandsox serve` clients with the key.");
            if save {
                save_credentials(&key.key, url)?;
            }
        }
        AuthCommand::SetPassword { storage: s } => {
            let storage = storage(s)?;
            let (_lock, store) = open_store(&storage)?;
            if std::io::stdin().is_terminal() {
                eprint!("new password: ");
                let _ = std::io::stderr().flush();
            }
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .map_err(|e| CliError::new(format!("cannot read the password: {e}")))?;
            store
                .set_password(line.trim_end_matches(['\n', '\r']))
                .map_err(core_error)?;
            println!("password set; existing sessions ended");
        }
        AuthCommand::CreateKey { name, save } => {
            let r: serde_json::Value = Client::new(url).post(
                "/api/auth/keys",
                &serde_json::json!({ "name": name }),
                std::time::Duration::from_secs(30),
            )?;
            let key = r["key"].as_str().unwrap_or_default();
            println!("{key}");
            eprintln!(
                "key id {} — the key is shown only now",
                r["key_id"].as_str().unwrap_or_default()
            );
            if save {
                save_credentials(key, url)?;
            }
        }
        AuthCommand::ListKeys { json } => {
            let keys: Vec<ApiKeyInfo> = Client::new(url).get("/api/auth/keys")?;
            if json {
                println!("{}", serde_json::to_string(&keys).unwrap_or_default());
            } else {
                println!("{:<16}  {:<24}  LAST USED", "ID", "NAME");
                for k in keys {
                    let used = k
                        .last_used_at
                        .map_or("never".to_owned(), |t| format!("{t:.0}"));
                    println!("{:<16}  {:<24}  {used}", k.id, k.name);
                }
            }
        }
        AuthCommand::RevokeKey { key_id } => {
            let r: serde_json::Value =
                Client::new(url).delete(&format!("/api/auth/keys/{}", segment(&key_id)))?;
            println!("{}", r["status"].as_str().unwrap_or("revoked"));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Opens the store owning the root (auth commands write; see `Storage::lock`).
fn open_store(
    storage: &bandsox_core::Storage,
) -> Result<(bandsox_core::storage::StorageLock, Store), CliError> {
    if !storage.db_path().exists() {
        return Err(
            CliError::new(format!("{} is not initialised", storage.root().display()))
                .with_hint("run `bandsox init` first"),
        );
    }
    let lock = storage.lock("auth").map_err(core_error)?;
    Ok((lock, Store::open(&storage.db_path()).map_err(core_error)?))
}

/// Writes `{"api_key", "server_url"}` to ~/.bandsox/credentials with mode 0600.
fn save_credentials(key: &str, url: &str) -> Result<(), CliError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = credentials_path().ok_or_else(|| CliError::new("HOME is not set"))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| CliError::new(format!("create {}: {e}", dir.display())))?;
    }
    let body = serde_json::json!({ "api_key": key, "server_url": url }).to_string();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| CliError::new(format!("write {}: {e}", path.display())))?;
    f.write_all(body.as_bytes())
        .map_err(|e| CliError::new(format!("write {}: {e}", path.display())))?;
    eprintln!("saved to {}", path.display());
    Ok(())
}
