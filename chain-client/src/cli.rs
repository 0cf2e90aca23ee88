//! What the worker and gateway binaries share: config files, key files, logging.

use std::ffi::OsString;
use std::path::Path;

use anyhow::{bail, Context, Result};
use subxt_signer::sr25519::Keypair;

/// The arguments a binary was started with, with those of a TOML config file (its keys are
/// the long flag names, `chain-url = "ws://..."`; arrays repeat the flag) inserted before the
/// command line's own, so flags on the command line win. `--config <file>` names the file.
pub fn args_with_config_file() -> Result<Vec<OsString>> {
    merge_config_file(std::env::args_os().collect())
}

/// [`args_with_config_file`] for given arguments (the program name first). A key given on
/// the command line replaces the file's value (all of them, for a list), so no single-valued
/// flag ever appears twice.
pub fn merge_config_file(mut args: Vec<OsString>) -> Result<Vec<OsString>> {
    let position = args.iter().position(|a| a == "--config");
    let Some(i) = position else { return Ok(args) };
    let path =
        args.get(i + 1).cloned().with_context(|| "--config needs a file path".to_string())?;
    args.drain(i..=i + 1);
    let file = Path::new(&path);
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read the config file {}", file.display()))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("the config file {} is not valid TOML", file.display()))?;
    let on_command_line: std::collections::BTreeSet<String> = args
        .iter()
        .filter_map(|a| a.to_str()?.strip_prefix("--"))
        .map(|flag| flag.split('=').next().unwrap_or(flag).to_string())
        .collect();
    let mut from_file = Vec::new();
    for (key, value) in table {
        if on_command_line.contains(&key) {
            continue;
        }
        let values = match value {
            toml::Value::Array(items) => items,
            other => vec![other],
        };
        for value in values {
            let text = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(n) => n.to_string(),
                toml::Value::Float(x) => x.to_string(),
                toml::Value::Boolean(true) => {
                    from_file.push(OsString::from(format!("--{key}")));
                    continue;
                },
                toml::Value::Boolean(false) => continue,
                other => bail!(
                    "{}: `{key}` must be a string, number, boolean or a list of them, not {other}",
                    file.display()
                ),
            };
            from_file.push(OsString::from(format!("--{key}={text}")));
        }
    }
    let program = args.remove(0);
    Ok(std::iter::once(program).chain(from_file).chain(args).collect())
}

/// An sr25519 account key from a secret URI (`//Alice` on dev chains, a mnemonic, or a
/// `0x` hex seed), given directly or as the contents of a file.
pub fn account_key(uri: Option<&str>, file: Option<&Path>) -> Result<Keypair> {
    let secret = match (uri, file) {
        (Some(uri), _) => uri.to_string(),
        (None, Some(file)) => std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the account key file {}", file.display()))?
            .trim()
            .to_string(),
        (None, None) => bail!("no account key: pass a secret URI or a key file"),
    };
    let uri: subxt_signer::SecretUri =
        secret.parse().map_err(|e| anyhow::anyhow!("the account key is not a secret URI: {e}"))?;
    Keypair::from_uri(&uri).map_err(|e| anyhow::anyhow!("the account key is invalid: {e}"))
}

/// The worker's ed25519 key: 32 bytes as 64 hex digits in `file`. With `create`, a missing
/// file is created with a fresh random key (readable by its owner only).
pub fn worker_key(file: &Path, create: bool) -> Result<ed25519_dalek::SigningKey> {
    if !file.exists() && create {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        std::fs::write(file, hex::encode(seed))
            .with_context(|| format!("cannot write the worker key file {}", file.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600));
        }
        tracing::info!(file = %file.display(), "generated a new worker key");
    }
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read the worker key file {}", file.display()))?;
    let bytes = hex::decode(text.trim().trim_start_matches("0x")).with_context(|| {
        format!("the worker key file {} does not hold hex digits", file.display())
    })?;
    let seed: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
        anyhow::anyhow!("the worker key file {} holds {} bytes, not 32", file.display(), b.len())
    })?;
    Ok(ed25519_dalek::SigningKey::from_bytes(&seed))
}

/// Structured logs to stderr; `RUST_LOG` filters (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// A binary's `main`: logging set up, then `run`; an error is printed as one line with its
/// causes (`error: ...: ...`) and the process exits with status 1.
pub async fn main(run: impl std::future::Future<Output = Result<()>>) {
    init_logging();
    if let Err(e) = run.await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merged(file: &str, command_line: &[&str]) -> Result<Vec<String>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("worker.toml");
        std::fs::write(&path, file)?;
        let mut args: Vec<OsString> = vec!["openledger-worker".into()];
        args.extend(command_line.iter().map(|a| {
            if *a == "CONFIG" {
                path.clone().into_os_string()
            } else {
                OsString::from(a)
            }
        }));
        Ok(merge_config_file(args)?.into_iter().map(|a| a.to_string_lossy().into_owned()).collect())
    }

    #[test]
    fn the_files_keys_become_flags_and_the_command_line_wins() {
        let file = "chain-url = \"ws://node:9944\"\nprice-milli = 7\nregister = true\n\
                    metrics = false\ngateway = [\"/ip4/1.2.3.4/tcp/1\", \"/ip4/1.2.3.4/tcp/2\"]\n";
        let args = merged(file, &["--config", "CONFIG", "--price-milli", "2"]).expect("merges");
        assert_eq!(
            args,
            [
                "openledger-worker",
                "--chain-url=ws://node:9944",
                "--gateway=/ip4/1.2.3.4/tcp/1",
                "--gateway=/ip4/1.2.3.4/tcp/2",
                "--register",
                "--price-milli",
                "2"
            ]
        );
        // A list on the command line replaces the file's whole list.
        let args =
            merged(file, &["--gateway=/ip4/5.6.7.8/tcp/3", "--config", "CONFIG"]).expect("merges");
        assert_eq!(args.iter().filter(|a| a.starts_with("--gateway")).count(), 1, "{args:?}");
    }

    #[test]
    fn a_bad_config_file_is_named_in_the_error() {
        let error = merged("price-milli = ", &["--config", "CONFIG"]).expect_err("invalid TOML");
        assert!(format!("{error:#}").contains("is not valid TOML"), "{error:#}");
        let error = merged("adapters = { a = 1 }", &["--config", "CONFIG"]).expect_err("a table");
        assert!(format!("{error:#}").contains("`adapters` must be"), "{error:#}");
        let missing =
            merge_config_file(vec!["w".into(), "--config".into(), "/no/such.toml".into()])
                .expect_err("missing file");
        assert!(format!("{missing:#}").contains("/no/such.toml"), "{missing:#}");
        let dangling = merge_config_file(vec!["w".into(), "--config".into()]).expect_err("no path");
        assert!(format!("{dangling:#}").contains("--config needs a file path"), "{dangling:#}");
    }
}
