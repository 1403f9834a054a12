//! Authentication state: the admin password (argon2id), API keys (random, stored as SHA-256,
//! compared in constant time) and browser sessions (server-side, revocable).
//!
//! Authentication is on once a password exists (`bandsox auth init`); the state lives in
//! SQLite, so deleting a file can never switch it off. Secrets are shown once and never
//! stored or logged in clear.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rusqlite::{params, OptionalExtension};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::{CoreError, Result};
use crate::store::{now, Store};

/// Prefix of every API key.
pub const KEY_PREFIX: &str = "bsx_";
/// Lifetime of a browser session, in seconds.
pub const SESSION_TTL_S: f64 = 86_400.0;
/// Shortest accepted password.
pub const MIN_PASSWORD_LEN: usize = 8;

/// An API key as listed (never with its secret).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ApiKeyInfo {
    pub id: String,
    pub name: String,
    pub created_at: f64,
    pub last_used_at: Option<f64>,
}

/// A freshly created key: the only time its secret is visible.
#[derive(Debug, Clone)]
pub struct NewApiKey {
    pub info: ApiKeyInfo,
    /// `bsx_<id>_<secret>`.
    pub key: String,
}

/// Who a request authenticated as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    ApiKey(String),
    Session,
}

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

fn sha256(s: &str) -> Vec<u8> {
    Sha256::digest(s.as_bytes()).to_vec()
}

impl Store {
    /// True once a password has been set.
    pub fn auth_enabled(&self) -> Result<bool> {
        Ok(self
            .conn()
            .query_row("SELECT 1 FROM auth_settings WHERE id = 1", [], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// Sets (or replaces) the admin password; every session ends.
    pub fn set_password(&self, password: &str) -> Result<()> {
        if password.chars().count() < MIN_PASSWORD_LEN {
            return Err(CoreError::InvalidInput(format!(
                "passwords are at least {MIN_PASSWORD_LEN} characters"
            )));
        }
        let salt = SaltString::generate(&mut OsRng);
        let hash = Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map_err(|e| CoreError::InvalidInput(format!("cannot hash the password: {e}")))?
            .to_string();
        let conn = self.conn();
        conn.execute(
            "INSERT INTO auth_settings (id, password_hash, updated_at) VALUES (1, ?1, ?2)
             ON CONFLICT(id) DO UPDATE SET password_hash = ?1, updated_at = ?2",
            params![hash, now()],
        )?;
        conn.execute("DELETE FROM sessions", [])?;
        Ok(())
    }

    /// Checks the admin password.
    pub fn verify_password(&self, password: &str) -> Result<bool> {
        let hash: Option<String> = self
            .conn()
            .query_row(
                "SELECT password_hash FROM auth_settings WHERE id = 1",
                [],
                |r| r.get(0),
            )
            .optional()?;
        let Some(hash) = hash else { return Ok(false) };
        let parsed = PasswordHash::new(&hash)
            .map_err(|e| CoreError::Conflict(format!("stored password hash is unreadable: {e}")))?;
        Ok(Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok())
    }

    /// Creates an API key named `name` (a label).
    pub fn create_api_key(&self, name: &str) -> Result<NewApiKey> {
        if name.is_empty() || name.len() > 128 || name.contains('\0') {
            return Err(CoreError::InvalidInput(
                "key names are 1 to 128 bytes without NUL".into(),
            ));
        }
        let id = format!("k{}", random_hex(6));
        let secret = random_hex(24);
        let info = ApiKeyInfo {
            id: id.clone(),
            name: name.to_owned(),
            created_at: now(),
            last_used_at: None,
        };
        self.conn().execute(
            "INSERT INTO api_keys (id, name, secret_hash, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![id, name, sha256(&secret), info.created_at],
        )?;
        Ok(NewApiKey {
            key: format!("{KEY_PREFIX}{id}_{secret}"),
            info,
        })
    }

    pub fn list_api_keys(&self) -> Result<Vec<ApiKeyInfo>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT id, name, created_at, last_used_at FROM api_keys ORDER BY created_at, id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(ApiKeyInfo {
                id: r.get(0)?,
                name: r.get(1)?,
                created_at: r.get(2)?,
                last_used_at: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Revokes a key; unknown ids are `not_found`.
    pub fn revoke_api_key(&self, id: &str) -> Result<()> {
        let n = self
            .conn()
            .execute("DELETE FROM api_keys WHERE id = ?1", [id])?;
        if n == 0 {
            return Err(CoreError::NotFound {
                kind: "key",
                id: id.to_owned(),
            });
        }
        Ok(())
    }

    /// The key id if `key` is a valid, unrevoked API key (and records its use).
    pub fn check_api_key(&self, key: &str) -> Result<Option<String>> {
        let Some((id, secret)) = key.strip_prefix(KEY_PREFIX).and_then(|k| k.split_once('_'))
        else {
            return Ok(None);
        };
        let conn = self.conn();
        let stored: Option<Vec<u8>> = conn
            .query_row(
                "SELECT secret_hash FROM api_keys WHERE id = ?1",
                [id],
                |r| r.get(0),
            )
            .optional()?;
        let ok = stored.is_some_and(|h| bool::from(h.ct_eq(&sha256(secret))));
        if !ok {
            return Ok(None);
        }
        conn.execute(
            "UPDATE api_keys SET last_used_at = ?2 WHERE id = ?1",
            params![id, now()],
        )?;
        Ok(Some(id.to_owned()))
    }

    /// Opens a browser session; returns its token (shown once, stored hashed).
    pub fn create_session(&self) -> Result<String> {
        let token = random_hex(32);
        let t = now();
        let conn = self.conn();
        conn.execute("DELETE FROM sessions WHERE expires_at < ?1", [t])?;
        conn.execute(
            "INSERT INTO sessions (token_hash, created_at, expires_at) VALUES (?1, ?2, ?3)",
            params![sha256(&token), t, t + SESSION_TTL_S],
        )?;
        Ok(token)
    }

    /// True if `token` is a live session.
    pub fn check_session(&self, token: &str) -> Result<bool> {
        Ok(self
            .conn()
            .query_row(
                "SELECT 1 FROM sessions WHERE token_hash = ?1 AND expires_at >= ?2",
                params![sha256(token), now()],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// Ends a session (logout).
    pub fn end_session(&self, token: &str) -> Result<()> {
        self.conn().execute(
            "DELETE FROM sessions WHERE token_hash = ?1",
            [sha256(token)],
        )?;
        Ok(())
    }

    /// A key or session token, whichever `token` is.
    pub fn authenticate(&self, token: &str) -> Result<Option<Principal>> {
        if token.starts_with(KEY_PREFIX) {
            return Ok(self.check_api_key(token)?.map(Principal::ApiKey));
        }
        Ok(self.check_session(token)?.then_some(Principal::Session))
    }
}

/// A random password for `bandsox auth init`.
pub fn generate_password() -> String {
    random_hex(12)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_keys_and_sessions() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("db")).unwrap();
        assert!(!s.auth_enabled().unwrap());
        assert!(s.set_password("short").is_err());
        s.set_password("correct horse").unwrap();
        assert!(s.auth_enabled().unwrap());
        assert!(s.verify_password("correct horse").unwrap());
        assert!(!s.verify_password("wrong horse!").unwrap());

        let k = s.create_api_key("ci").unwrap();
        assert!(k.key.starts_with("bsx_k"));
        assert_eq!(
            s.authenticate(&k.key).unwrap(),
            Some(Principal::ApiKey(k.info.id.clone()))
        );
        assert!(s.list_api_keys().unwrap()[0].last_used_at.is_some());
        let mut forged = k.key.clone();
        forged.pop();
        forged.push('x');
        assert_eq!(s.authenticate(&forged).unwrap(), None);
        assert_eq!(s.authenticate("bsx_nope").unwrap(), None);
        s.revoke_api_key(&k.info.id).unwrap();
        assert_eq!(s.authenticate(&k.key).unwrap(), None);
        assert!(s.revoke_api_key(&k.info.id).is_err());

        let t = s.create_session().unwrap();
        assert_eq!(s.authenticate(&t).unwrap(), Some(Principal::Session));
        s.end_session(&t).unwrap();
        assert_eq!(s.authenticate(&t).unwrap(), None);
        let t2 = s.create_session().unwrap();
        s.set_password("another pass").unwrap();
        assert_eq!(
            s.authenticate(&t2).unwrap(),
            None,
            "a new password ends sessions"
        );
        // Nothing secret is stored in clear.
        let conn = s.conn();
        let hash: String = conn
            .query_row("SELECT password_hash FROM auth_settings", [], |r| r.get(0))
            .unwrap();
        assert!(hash.starts_with("$argon2id$"));
    }
}
