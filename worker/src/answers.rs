//! What a worker keeps of each answer for the challenge window, so that a verifier can
//! recompute it (issue 23): the prompt's and the output's token ids, the adapter by its
//! registered content hash, the sampling that picked the output (temperature, top-k, top-p,
//! seed: a verifier replays it over its own logits), and the activation commitment the
//! engine made while generating ([`openledger_engine::commitment`]). One JSON file per answer in the answers directory,
//! named by what was paid for it (`job-<id>.json`, `channel-<c>-<r>.json`), written before
//! the receipt leaves the worker and deleted once older than the retention.
//!
//! `openledger-worker verify <file>...` checks such files against a model and adapters
//! ([`AnswerRecord::read`], [`openledger_engine::Engine::submit_verification`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use openledger_engine::{ActivationCommitment, SamplingParams};
use serde_json::{json, Value};

/// The record format's version. Version 1 records (kept before records named their
/// sampling) are still read, with `sampling` `None`: their verification checks the
/// commitment alone.
pub const RECORD_VERSION: u64 = 2;

/// How a kept answer's tokens were picked: what a verifier needs to replay the sampler.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RecordedSampling {
    /// 0: greedy.
    pub temperature: f32,
    pub top_p: f32,
    /// 0: all tokens.
    pub top_k: usize,
    pub seed: u64,
}

impl RecordedSampling {
    /// What a generation with `params` records.
    pub fn of(params: &SamplingParams) -> Self {
        Self {
            temperature: params.temperature,
            top_p: params.top_p,
            top_k: params.top_k,
            seed: params.seed,
        }
    }

    /// The sampler settings that replay the `output_tokens` of a record.
    pub fn replay(&self, output_tokens: usize) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            seed: self.seed,
            max_tokens: output_tokens.max(1),
            ..SamplingParams::default()
        }
    }
}

/// One kept answer.
#[derive(Clone, Debug, PartialEq)]
pub struct AnswerRecord {
    /// What was paid for it: `job-<id>` or `channel-<c>-<r>`.
    pub key: String,
    /// The on-chain adapter and the BLAKE2b-256 of its `adapter_model.safetensors`; `None`
    /// for the base model alone.
    pub adapter: Option<(u32, [u8; 32])>,
    pub prompt_tokens: Vec<u32>,
    pub output_tokens: Vec<u32>,
    /// How the output was sampled (`None` in a version 1 record).
    pub sampling: Option<RecordedSampling>,
    pub activations: ActivationCommitment,
    /// Seconds since the Unix epoch when it was kept.
    pub kept_at: u64,
}

impl AnswerRecord {
    /// The record as the JSON the answers directory holds.
    pub fn to_json(&self) -> Value {
        json!({
            "version": RECORD_VERSION,
            "key": self.key,
            "adapter": self.adapter.map(|(id, hash)| json!({"id": id, "content_hash": format!("0x{}", hex::encode(hash))})),
            "prompt_tokens": self.prompt_tokens,
            "output_tokens": self.output_tokens,
            "sampling": self.sampling.map(|p| json!({
                "temperature": p.temperature,
                "top_p": p.top_p,
                "top_k": p.top_k,
                "seed": p.seed,
            })),
            "activations": format!("0x{}", hex::encode(self.activations.as_bytes())),
            "kept_at": self.kept_at,
        })
    }

    /// Reads a record, naming the file and the field in any error.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the answer record {}", path.display()))?;
        Self::from_json(&text).with_context(|| format!("{}: not an answer record", path.display()))
    }

    /// Parses a record's JSON.
    pub fn from_json(text: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(text)?;
        let version = match v["version"].as_u64() {
            Some(n @ (1 | RECORD_VERSION)) => n,
            other => bail!("version {other:?}, this worker reads versions 1 to {RECORD_VERSION}"),
        };
        let tokens = |field: &str| -> Result<Vec<u32>> {
            v[field]
                .as_array()
                .with_context(|| format!("`{field}` is not a list"))?
                .iter()
                .map(|t| {
                    t.as_u64()
                        .and_then(|t| u32::try_from(t).ok())
                        .with_context(|| format!("`{field}` holds {t}, not a token id"))
                })
                .collect()
        };
        let hex_field = |field: &Value, name: &str| -> Result<Vec<u8>> {
            let s = field.as_str().with_context(|| format!("`{name}` is not a string"))?;
            hex::decode(s.trim_start_matches("0x")).with_context(|| format!("`{name}` is not hex"))
        };
        let adapter = match &v["adapter"] {
            Value::Null => None,
            a => {
                let id = a["id"]
                    .as_u64()
                    .and_then(|i| u32::try_from(i).ok())
                    .context("`adapter.id` is not an adapter id")?;
                let hash: [u8; 32] = hex_field(&a["content_hash"], "adapter.content_hash")?
                    .try_into()
                    .map_err(|_| anyhow::anyhow!("`adapter.content_hash` is not 32 bytes"))?;
                Some((id, hash))
            },
        };
        let sampling = match (&v["sampling"], version) {
            (Value::Null, 1) => None,
            (Value::Null, _) => bail!("`sampling` is missing"),
            (p, _) => {
                let number = |name: &str| {
                    p[name].as_f64().with_context(|| format!("`sampling.{name}` is not a number"))
                };
                let integer = |name: &str| {
                    p[name]
                        .as_u64()
                        .with_context(|| format!("`sampling.{name}` is not a whole number"))
                };
                Some(RecordedSampling {
                    temperature: number("temperature")? as f32,
                    top_p: number("top_p")? as f32,
                    top_k: usize::try_from(integer("top_k")?)?,
                    seed: integer("seed")?,
                })
            },
        };
        let output_tokens = tokens("output_tokens")?;
        // A commitment to an adapted output carries the adapter's delta rows too. One laid
        // out the other way (a worker that skipped the adapter it names) is read as such when
        // that layout covers the output, so that its verifier refuses it for its layout.
        let bytes = hex_field(&v["activations"], "activations")?;
        let adapted = adapter.is_some();
        let activations = match ActivationCommitment::from_bytes(bytes.clone(), adapted) {
            Ok(c) if c.tokens() == output_tokens.len() => c,
            first => ActivationCommitment::from_bytes(bytes, !adapted)
                .ok()
                .filter(|c| c.tokens() == output_tokens.len())
                .map_or(first, Ok)?,
        };
        Ok(Self {
            key: v["key"].as_str().context("`key` is not a string")?.to_string(),
            adapter,
            prompt_tokens: tokens("prompt_tokens")?,
            output_tokens,
            sampling,
            activations,
            kept_at: v["kept_at"].as_u64().unwrap_or(0),
        })
    }
}

/// The key of an on-chain job's record (`job-<id>`).
pub fn job_key(job: u64) -> String {
    format!("job-{job}")
}

/// The key of the record of request `request` on channel `channel` (`channel-<c>-<r>`).
pub fn request_key(channel: u64, request: u64) -> String {
    format!("channel-{channel}-{request}")
}

/// The answers directory and how long its records are kept.
#[derive(Clone, Debug)]
pub struct AnswerStore {
    dir: PathBuf,
    retention: Duration,
}

impl AnswerStore {
    /// Opens (creating) `dir`.
    pub fn open(dir: &Path, retention: Duration) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the answers directory {}", dir.display()))?;
        Ok(Self { dir: dir.to_path_buf(), retention })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of the record with `key`.
    pub fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.json"))
    }

    /// Writes `record` (to a temporary name first, so a reader never sees half a file).
    pub fn keep(&self, record: &AnswerRecord) -> Result<PathBuf> {
        let path = self.path(&record.key);
        let tmp = self.dir.join(format!(".{}.json.tmp", record.key));
        std::fs::write(&tmp, record.to_json().to_string())
            .and_then(|()| std::fs::rename(&tmp, &path))
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(path)
    }

    /// Deletes the records kept longer than the retention; returns how many.
    pub fn prune(&self) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return 0 };
        let now = SystemTime::now();
        let mut gone = 0;
        for e in entries.flatten() {
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age > self.retention);
            let ours = e.file_name().to_string_lossy().ends_with(".json");
            if old && ours && std::fs::remove_file(e.path()).is_ok() {
                gone += 1;
            }
        }
        gone
    }
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_bad_ones_are_named() {
        let mut activations = ActivationCommitment::new(true);
        activations.push_row(&[0.5, -2.0, 1.0]).unwrap();
        activations.push_delta_words(&[7, 9]);
        activations.seal(&[9], true);
        let record = AnswerRecord {
            key: "job-7".into(),
            adapter: Some((3, [0xab; 32])),
            prompt_tokens: vec![1, 2, 3],
            output_tokens: vec![9],
            sampling: Some(RecordedSampling { temperature: 0.7, top_p: 0.9, top_k: 40, seed: 11 }),
            activations,
            kept_at: 1_700_000_000,
        };
        let dir = tempfile::tempdir().unwrap();
        let store =
            AnswerStore::open(&dir.path().join("answers"), Duration::from_secs(3600)).unwrap();
        let path = store.keep(&record).unwrap();
        assert_eq!(path.file_name().unwrap(), "job-7.json");
        assert_eq!(AnswerRecord::read(&path).unwrap(), record);
        assert_eq!(store.prune(), 0, "a fresh record stays");

        let mut v = record.to_json();
        v["activations"] = json!("0x0102");
        let e = AnswerRecord::from_json(&v.to_string()).unwrap_err();
        assert!(format!("{e:#}").contains("not the length of a commitment"), "{e:#}");
        // A commitment without delta rows under a record naming an adapter (a worker that
        // skipped it) reads as what it is, for the verifier to refuse.
        let mut bare = ActivationCommitment::new(false);
        bare.push_row(&[0.5, -2.0, 1.0]).unwrap();
        bare.seal(&[], true);
        let mut v = record.to_json();
        v["activations"] = json!(format!("0x{}", hex::encode(bare.as_bytes())));
        let read = AnswerRecord::from_json(&v.to_string()).unwrap();
        assert!(!read.activations.is_adapted() && read.activations.tokens() == 1);
        let mut v = record.to_json();
        v["output_tokens"] = json!([1, -4]);
        let e = AnswerRecord::from_json(&v.to_string()).unwrap_err();
        assert!(format!("{e:#}").contains("output_tokens"), "{e:#}");
        // The temperature comes back as the same f32 bits (the verifier replays with it).
        let again = AnswerRecord::from_json(&record.to_json().to_string()).unwrap();
        assert_eq!(again.sampling.unwrap().temperature.to_bits(), 0.7f32.to_bits());
        let mut v = record.to_json();
        v["sampling"] = Value::Null;
        let e = AnswerRecord::from_json(&v.to_string()).unwrap_err();
        assert!(format!("{e:#}").contains("`sampling` is missing"), "{e:#}");
        // A version 1 record (no sampling) still reads.
        v["version"] = json!(1);
        assert_eq!(AnswerRecord::from_json(&v.to_string()).unwrap().sampling, None);
        v["version"] = json!(3);
        let e = AnswerRecord::from_json(&v.to_string()).unwrap_err();
        assert!(format!("{e:#}").contains("version Some(3)"), "{e:#}");
        let e = AnswerRecord::read(&dir.path().join("missing.json")).unwrap_err();
        assert!(format!("{e:#}").contains("missing.json"), "{e:#}");

        let short = AnswerStore::open(store.dir(), Duration::ZERO).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(short.prune(), 1, "past the retention it goes");
        assert!(!path.exists());
    }
}
