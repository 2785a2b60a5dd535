//! A function's configuration and secrets: the rules their names and values follow,
//! and the sealing of secrets at rest.
//!
//! Secrets are sealed with XChaCha20-Poly1305 (RustCrypto's `chacha20poly1305`) under
//! one host key: `NEWT_SECRET_KEY` (base64 of 32 bytes) when set, else the key file
//! `$NEWT_HOME/secret.key`, made 0600 with a random key the first time a secret is
//! set. Each value gets a random 24-byte nonce, and its function and name as
//! associated data, so a sealed value copied onto another function or name in the
//! database does not open. A sealed value names the key it was sealed with (a short
//! hash of the key, which tells nothing about it), so opening it under another key
//! fails with an error saying so rather than a bare "decryption failed".
//!
//! Plain values exist only in memory ([`newt_runtime::Env`], whose `Debug` shows
//! names) and in the instances that receive them; no error here carries a value.

use anyhow::{Context, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chacha20poly1305::aead::{Aead, Generate, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use sha2::Digest as _;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use crate::store::SealedSecrets;

/// The environment variable that holds the host key (base64 of 32 bytes).
pub const KEY_VAR: &str = "NEWT_SECRET_KEY";
/// The key file under `NEWT_HOME`, used when [`KEY_VAR`] is not set.
pub const KEY_FILE: &str = "secret.key";

/// Longest variable name, in bytes.
pub const MAX_NAME_BYTES: usize = 128;
/// Longest value of one variable or secret, in bytes.
pub const MAX_VALUE_BYTES: usize = 32 * 1024;
/// Most variables and secrets one function may have, together.
pub const MAX_VARIABLES: usize = 128;
/// Most bytes of names and values one function may have, together: what every
/// instance of it carries, and what each container's `init` message sends.
pub const MAX_TOTAL_BYTES: usize = 256 * 1024;

/// The prefix of names newt sets itself (`NEWT_FUNCTION`, `NEWT_CALL_ID`, ...).
const RESERVED_PREFIX: &str = "NEWT_";

/// The format tag of a sealed value.
const SEALED_TAG: &str = "v1";

/// Checks a variable's (or secret's) name: `[A-Za-z_][A-Za-z0-9_]*`, at most
/// [`MAX_NAME_BYTES`], not starting with `NEWT_`. The error is the 400's message.
pub fn check_name(name: &str) -> Result<(), String> {
    let bytes = name.as_bytes();
    let well_formed = !bytes.is_empty()
        && (bytes[0].is_ascii_alphabetic() || bytes[0] == b'_')
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'_');
    if !well_formed {
        return Err(format!(
            "invalid variable name {:?}: use letters, digits and '_', not starting with a digit",
            name.chars().take(80).collect::<String>()
        ));
    }
    if bytes.len() > MAX_NAME_BYTES {
        return Err(format!(
            "variable name {}... is {} bytes long; the limit is {MAX_NAME_BYTES}",
            &name[..40],
            bytes.len()
        ));
    }
    if name.to_ascii_uppercase().starts_with(RESERVED_PREFIX) {
        return Err(format!(
            "variable name {name} is reserved: newt sets the NEWT_* variables itself"
        ));
    }
    Ok(())
}

/// Checks one value of variable `name`: at most [`MAX_VALUE_BYTES`], no NUL byte (an
/// environment cannot carry one). The message names the variable, never the value.
pub fn check_value(name: &str, value: &str) -> Result<(), String> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(format!(
            "the value of {name} is {} bytes long; the limit is {MAX_VALUE_BYTES} bytes",
            value.len()
        ));
    }
    if value.contains('\0') {
        return Err(format!(
            "the value of {name} holds a NUL byte, which an environment cannot carry"
        ));
    }
    Ok(())
}

/// Checks a function's whole configuration: each variable and secret name and value,
/// no name both a variable and a secret, and the count and size limits. `secrets`
/// are the plain values (checked at the door, before sealing).
pub fn check_all<'a>(
    env: &BTreeMap<String, String>,
    secret_names: impl IntoIterator<Item = &'a str>,
) -> Result<(), String> {
    let mut total = 0;
    for (name, value) in env {
        check_name(name)?;
        check_value(name, value)?;
        total += name.len() + value.len();
    }
    let mut count = env.len();
    for name in secret_names {
        check_name(name)?;
        if env.contains_key(name) {
            return Err(format!(
                "{name} is both a variable and a secret: unset one of them"
            ));
        }
        count += 1;
        total += name.len();
    }
    if count > MAX_VARIABLES {
        return Err(format!(
            "a function may have at most {MAX_VARIABLES} variables and secrets; this \
             configuration has {count}"
        ));
    }
    if total > MAX_TOTAL_BYTES {
        return Err(format!(
            "a function's variables and secrets may take at most {MAX_TOTAL_BYTES} bytes \
             together; these take {total}"
        ));
    }
    Ok(())
}

/// The host key, ready to seal and open. Its `Debug` shows only its id.
struct SecretKey {
    cipher: XChaCha20Poly1305,
    /// A short hash of the key: tells which key sealed a value, reveals nothing.
    id: String,
}

impl SecretKey {
    /// A key from its base64 text (32 bytes); `source` names where it came from.
    fn from_base64(text: &str, source: &str) -> anyhow::Result<SecretKey> {
        let bytes = BASE64.decode(text.trim()).map_err(|_| {
            anyhow::anyhow!("{source} is not base64 (expected 32 random bytes in base64)")
        })?;
        let bytes: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            anyhow::anyhow!(
                "{source} holds {} bytes; a secret key is 32 random bytes in base64 \
                 (e.g. `head -c 32 /dev/urandom | base64`)",
                bytes.len()
            )
        })?;
        Ok(SecretKey::from_bytes(&bytes))
    }

    fn from_bytes(bytes: &[u8; 32]) -> SecretKey {
        let mut hash = sha2::Sha256::new();
        hash.update(b"newt secret key id\0");
        hash.update(bytes);
        SecretKey {
            cipher: XChaCha20Poly1305::new(&Key::from(*bytes)),
            id: hex::encode(&hash.finalize()[..4]),
        }
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey({})", self.id)
    }
}

/// What a sealed value is bound to: its function and name.
fn associated_data(function: &str, name: &str) -> Vec<u8> {
    format!("newt secret\0{function}\0{name}").into_bytes()
}

/// Where the host key comes from, and the key once known. Sealing makes the key file
/// at first use; opening never makes one.
pub struct SecretKeys {
    /// The key file, when the key does not come from [`KEY_VAR`].
    file: Option<PathBuf>,
    key: Mutex<Option<Arc<SecretKey>>>,
}

impl std::fmt::Debug for SecretKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretKeys")
            .field("file", &self.file)
            .field(
                "key",
                &*self.key.lock().unwrap_or_else(PoisonError::into_inner),
            )
            .finish()
    }
}

impl Default for SecretKeys {
    /// [`SecretKeys::none`].
    fn default() -> Self {
        SecretKeys::none()
    }
}

impl SecretKeys {
    /// The keys of a host on `home`: [`KEY_VAR`] if set (it must be valid), else the
    /// key file under `home`, read now if it exists and made at the first secret if
    /// not.
    pub fn for_home(home: &Path) -> anyhow::Result<SecretKeys> {
        match std::env::var(KEY_VAR) {
            Ok(text) => SecretKeys::from_base64(&text),
            Err(std::env::VarError::NotUnicode(_)) => {
                bail!("{KEY_VAR} is not base64 (expected 32 random bytes in base64)")
            }
            Err(std::env::VarError::NotPresent) => {
                let file = home.join(KEY_FILE);
                let key = match std::fs::read_to_string(&file) {
                    Ok(text) => Some(Arc::new(read_key_file(&file, &text)?)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                    Err(e) => {
                        return Err(e).with_context(|| format!("reading {}", file.display()));
                    }
                };
                Ok(SecretKeys {
                    file: Some(file),
                    key: Mutex::new(key),
                })
            }
        }
    }

    /// Keys from a base64 key (as [`KEY_VAR`] holds it), with no key file.
    pub fn from_base64(text: &str) -> anyhow::Result<SecretKeys> {
        Ok(SecretKeys {
            file: None,
            key: Mutex::new(Some(Arc::new(SecretKey::from_base64(text, KEY_VAR)?))),
        })
    }

    /// Keys that know no key and make none: opening anything fails (a host that was
    /// given no home, such as a test's service).
    pub fn none() -> SecretKeys {
        SecretKeys {
            file: None,
            key: Mutex::new(None),
        }
    }

    /// The key to seal with, making the key file if there is none yet.
    fn sealing_key(&self) -> anyhow::Result<Arc<SecretKey>> {
        let mut key = self.key.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(key) = key.as_ref() {
            return Ok(key.clone());
        }
        let Some(file) = &self.file else {
            bail!("this server has no secret key: set {KEY_VAR}");
        };
        let made = Arc::new(make_key_file(file)?);
        *key = Some(made.clone());
        Ok(made)
    }

    /// Seals `value` as secret `name` of `function`.
    pub fn seal(&self, function: &str, name: &str, value: &str) -> anyhow::Result<String> {
        let key = self.sealing_key()?;
        let nonce = XNonce::try_generate()
            .map_err(|e| anyhow::anyhow!("no random numbers for a nonce: {e}"))?;
        let aad = associated_data(function, name);
        let sealed = key
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: value.as_bytes(),
                    aad: &aad,
                },
            )
            .map_err(|_| anyhow::anyhow!("sealing secret {name} of {function} failed"))?;
        let mut bytes = nonce.to_vec();
        bytes.extend_from_slice(&sealed);
        Ok(format!("{SEALED_TAG}.{}.{}", key.id, BASE64.encode(bytes)))
    }

    /// Opens secret `name` of `function`. Fails, saying why without the value, when
    /// it was sealed with another key, for another function or name, or was altered.
    pub fn open(&self, function: &str, name: &str, sealed: &str) -> anyhow::Result<String> {
        let what = || format!("secret {name} of function {function}");
        let mut parts = sealed.splitn(3, '.');
        let (Some(SEALED_TAG), Some(id), Some(body)) = (parts.next(), parts.next(), parts.next())
        else {
            bail!("{} is not a sealed value this newt knows", what());
        };
        let key = self
            .key
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let Some(key) = key else {
            bail!(
                "{} was sealed with key {id}, and this server has no key: set {KEY_VAR} \
                 or restore {}",
                what(),
                self.file
                    .as_deref()
                    .map_or_else(|| KEY_FILE.into(), |f| f.display().to_string())
            );
        };
        if key.id != id {
            bail!(
                "{} was sealed with key {id}, not with this server's key {}: {KEY_VAR} or \
                 the key file changed; restore that key, or set the secret again",
                what(),
                key.id
            );
        }
        let bytes = BASE64
            .decode(body)
            .map_err(|_| anyhow::anyhow!("{} is damaged (not base64)", what()))?;
        if bytes.len() < 24 {
            bail!("{} is damaged (too short)", what());
        }
        let (nonce, sealed) = bytes.split_at(24);
        let nonce = XNonce::try_from(nonce).map_err(|_| anyhow::anyhow!("bad nonce"))?;
        let aad = associated_data(function, name);
        let plain = key
            .cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: sealed,
                    aad: &aad,
                },
            )
            .map_err(|_| {
                anyhow::anyhow!(
                    "{} does not open with this server's key: it was altered, or sealed \
                     for another function or name",
                    what()
                )
            })?;
        String::from_utf8(plain).map_err(|_| anyhow::anyhow!("{} is not UTF-8", what()))
    }

    /// Opens every secret of `function`.
    pub fn open_all(
        &self,
        function: &str,
        sealed: &SealedSecrets,
    ) -> anyhow::Result<BTreeMap<String, String>> {
        sealed
            .0
            .iter()
            .map(|(name, value)| Ok((name.clone(), self.open(function, name, value)?)))
            .collect()
    }
}

/// Reads a key file, narrowing its permissions to 0600 if others could read it.
fn read_key_file(file: &Path, text: &str) -> anyhow::Result<SecretKey> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(file)
        .with_context(|| format!("reading {}", file.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        tracing::warn!(file = %file.display(), "narrowing permissions of the secret key to 0600");
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("setting the permissions of {}", file.display()))?;
    }
    SecretKey::from_base64(text, &file.display().to_string())
}

/// Makes the key file (0600) with a new random key; if another process made it
/// meanwhile, reads that one.
fn make_key_file(file: &Path) -> anyhow::Result<SecretKey> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let bytes = <[u8; 32]>::try_generate()
        .map_err(|e| anyhow::anyhow!("no random numbers for a secret key: {e}"))?;
    let made = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file);
    let mut out = match made {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?;
            return read_key_file(file, &text);
        }
        Err(e) => return Err(e).with_context(|| format!("creating {}", file.display())),
    };
    out.write_all(format!("{}\n", BASE64.encode(bytes)).as_bytes())
        .and_then(|()| out.sync_all())
        .with_context(|| format!("writing {}", file.display()))?;
    let key = SecretKey::from_bytes(&bytes);
    tracing::info!(file = %file.display(), key = %key.id,
        "made the secret key: back it up, secrets cannot be read without it");
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_text(byte: u8) -> String {
        BASE64.encode([byte; 32])
    }

    #[test]
    fn a_sealed_secret_opens_with_its_key_function_and_name_only() {
        let keys = SecretKeys::from_base64(&key_text(1)).unwrap();
        let sealed = keys.seal("dice", "API_KEY", "hunter2").unwrap();
        assert!(!sealed.contains("hunter2"));
        assert_eq!(keys.open("dice", "API_KEY", &sealed).unwrap(), "hunter2");
        // A fresh nonce each time: the same value never seals the same way twice.
        assert_ne!(sealed, keys.seal("dice", "API_KEY", "hunter2").unwrap());

        for (function, name) in [("other", "API_KEY"), ("dice", "OTHER")] {
            let err = keys.open(function, name, &sealed).unwrap_err().to_string();
            assert!(err.contains("does not open"), "{err}");
        }
        let mut altered = sealed.clone();
        let last = altered.pop().unwrap();
        altered.push(if last == 'A' { 'B' } else { 'A' });
        assert!(keys.open("dice", "API_KEY", &altered).is_err());
    }

    #[test]
    fn the_wrong_key_fails_clearly_and_without_the_value() {
        let sealed = SecretKeys::from_base64(&key_text(1))
            .unwrap()
            .seal("dice", "API_KEY", "hunter2")
            .unwrap();
        let other = SecretKeys::from_base64(&key_text(2)).unwrap();
        let err = other
            .open("dice", "API_KEY", &sealed)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("sealed with key") && err.contains(KEY_VAR),
            "{err}"
        );
        assert!(err.contains("API_KEY") && !err.contains("hunter2"), "{err}");

        let err = SecretKeys::none()
            .open("dice", "API_KEY", &sealed)
            .unwrap_err()
            .to_string();
        assert!(err.contains("has no key"), "{err}");
        assert!(SecretKeys::none().seal("dice", "K", "v").is_err());
    }

    #[test]
    fn bad_keys_are_refused_with_how_to_make_one() {
        let err = SecretKeys::from_base64("not base64!")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not base64"), "{err}");
        let err = SecretKeys::from_base64(&BASE64.encode([0u8; 16]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("16 bytes") && err.contains("/dev/urandom"),
            "{err}"
        );
        // Debug shows the key's id, never the key.
        let keys = SecretKeys::from_base64(&key_text(7)).unwrap();
        let debug = format!("{keys:?}");
        assert!(
            !debug.contains(&key_text(7)) && debug.contains("SecretKey("),
            "{debug}"
        );
    }

    #[test]
    fn the_key_file_is_made_0600_at_the_first_secret_and_read_after() {
        use std::os::unix::fs::PermissionsExt;
        let home = tempfile::tempdir().unwrap();
        let file = home.path().join(KEY_FILE);
        let keys = SecretKeys {
            file: Some(file.clone()),
            key: Mutex::new(None),
        };
        let err = keys
            .open("f", "K", "v1.00000000.AAAA")
            .unwrap_err()
            .to_string();
        assert!(err.contains("has no key"), "{err}");
        assert!(!file.exists(), "opening never makes a key");

        let sealed = keys.seal("f", "K", "value").unwrap();
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let text = std::fs::read_to_string(&file).unwrap();
        let again = SecretKeys {
            file: Some(file.clone()),
            key: Mutex::new(Some(Arc::new(read_key_file(&file, &text).unwrap()))),
        };
        assert_eq!(again.open("f", "K", &sealed).unwrap(), "value");
        // The file's key is the same text NEWT_SECRET_KEY takes.
        let from_var = SecretKeys::from_base64(&text).unwrap();
        assert_eq!(from_var.open("f", "K", &sealed).unwrap(), "value");
    }

    #[test]
    fn names_and_values_follow_the_rules() {
        for good in ["A", "_x", "API_KEY", "a1", &"K".repeat(MAX_NAME_BYTES)] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "1A",
            "A-B",
            "A B",
            "É",
            "A=B",
            &"K".repeat(MAX_NAME_BYTES + 1),
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        for reserved in ["NEWT_CALL_ID", "newt_anything", "NEWT_"] {
            let err = check_name(reserved).unwrap_err();
            assert!(err.contains("reserved"), "{err}");
        }
        assert!(check_value("K", &"v".repeat(MAX_VALUE_BYTES)).is_ok());
        let err = check_value("K", &"v".repeat(MAX_VALUE_BYTES + 1)).unwrap_err();
        assert!(err.contains("K") && err.contains("32768"), "{err}");
        assert!(check_value("K", "a\0b").is_err());
    }

    #[test]
    fn a_whole_configuration_is_bounded() {
        let env = |n: usize, size: usize| -> BTreeMap<String, String> {
            (0..n)
                .map(|i| (format!("V{i}"), "x".repeat(size)))
                .collect()
        };
        assert!(check_all(&env(MAX_VARIABLES, 10), []).is_ok());
        let err = check_all(&env(MAX_VARIABLES, 10), ["S"]).unwrap_err();
        assert!(err.contains("at most 128"), "{err}");
        let err = check_all(&env(10, MAX_VALUE_BYTES), []).unwrap_err();
        assert!(err.contains("bytes"), "{err}");
        let err = check_all(&env(1, 1), ["V0"]).unwrap_err();
        assert!(err.contains("both a variable and a secret"), "{err}");
    }
}
