//! Run directories: the resolved config, the tokenizers, checkpoints (safetensors, written
//! atomically, the last K kept) and a metrics log of one JSON object per line.

use crate::error::Error;

use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` through a temporary file in the same folder, synced and then
/// renamed over the target, so a reader never sees a half-written file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            d.sync_all().ok();
        }
        Ok(())
    };
    write().map_err(|source| {
        std::fs::remove_file(&tmp).ok();
        Error::Io { path: path.to_path_buf(), source }
    })
}

use muse_runtime::checkpoint;
use muse_runtime::HostTensor;
use std::collections::HashMap;
use std::path::PathBuf;

/// A run directory.
pub struct RunDir {
    /// Its path.
    pub path: PathBuf,
    /// Checkpoints kept (older ones are deleted).
    pub keep: usize,
}

/// A checkpoint's tensors (parameters, optimizer state, EMA) and where training stood.
pub type Checkpoint = (HashMap<String, HostTensor>, Progress);

/// What a checkpoint holds besides tensors: where training stands.
#[derive(Clone, Debug, PartialEq)]
pub struct Progress {
    /// Optimizer steps taken.
    pub step: u64,
    /// Position in the data stream of the next batch.
    pub data_pos: u64,
}

impl RunDir {
    /// Creates (or reuses) the directory.
    pub fn create(path: &Path, keep: usize) -> Result<RunDir, Error> {
        std::fs::create_dir_all(path.join("checkpoints")).map_err(Error::io(&path.join("checkpoints")))?;
        Ok(RunDir { path: path.to_path_buf(), keep: keep.max(1) })
    }

    /// Opens an existing run (for `--resume`, sampling, tokenizing).
    pub fn open(path: &Path) -> Result<RunDir, Error> {
        if !path.join("config.json").is_file() {
            return Err(Error::RunDir(format!("{}: not a muse run directory (no config.json)", path.display())));
        }
        Ok(RunDir { path: path.to_path_buf(), keep: 3 })
    }

    /// The resolved config.
    pub fn config(&self) -> Result<serde_json::Value, Error> {
        let p = self.path.join("config.json");
        let text = std::fs::read_to_string(&p).map_err(Error::io(&p))?;
        serde_json::from_str(&text).map_err(Error::format(&p))
    }

    /// Writes the resolved config.
    pub fn write_config(&self, config: &serde_json::Value) -> Result<(), Error> {
        let text = serde_json::to_string_pretty(config).expect("JSON values serialise");
        write_atomic(&self.path.join("config.json"), text.as_bytes())
    }

    /// Appends one line to metrics.jsonl.
    pub fn log(&self, line: &serde_json::Value) -> Result<(), Error> {
        let p = self.path.join("metrics.jsonl");
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&p).map_err(Error::io(&p))?;
        writeln!(f, "{line}").map_err(Error::io(&p))
    }

    /// Drops metrics lines of steps after `step` (a resumed run rewrites them).
    pub fn truncate_log(&self, step: u64) -> Result<(), Error> {
        let p = self.path.join("metrics.jsonl");
        let Ok(text) = std::fs::read_to_string(&p) else { return Ok(()) };
        let kept: String = text
            .lines()
            .filter(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                    .is_some_and(|s| s <= step)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        write_atomic(&p, kept.as_bytes())
    }

    /// Saves a checkpoint: the tensors in one safetensors file, then `latest.json` naming it
    /// (each written atomically, so a crash leaves the previous checkpoint in force); the
    /// oldest beyond `keep` are deleted.
    pub fn save(&self, tensors: &HashMap<String, HostTensor>, progress: &Progress) -> Result<PathBuf, Error> {
        let name = format!("step-{:08}.safetensors", progress.step);
        let file = self.path.join("checkpoints").join(&name);
        checkpoint::save(&file, tensors)?;
        let bytes = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        let latest = serde_json::json!({
            "checkpoint": name, "step": progress.step, "data_pos": progress.data_pos, "bytes": bytes,
        });
        write_atomic(&self.path.join("latest.json"), latest.to_string().as_bytes())?;
        let mut all = self.checkpoints();
        while all.len() > self.keep {
            let old = all.remove(0);
            std::fs::remove_file(self.path.join("checkpoints").join(old)).ok();
        }
        Ok(file)
    }

    /// Checkpoint file names, oldest first.
    pub fn checkpoints(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.path.join("checkpoints"))
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|n| n.starts_with("step-") && n.ends_with(".safetensors"))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// The checkpoint `latest.json` names, checked: it must exist with the recorded size and
    /// parse as safetensors. `None` when the run has no checkpoint yet.
    pub fn latest(&self) -> Result<Option<Checkpoint>, Error> {
        let p = self.path.join("latest.json");
        let Ok(text) = std::fs::read_to_string(&p) else { return Ok(None) };
        let v: serde_json::Value = serde_json::from_str(&text).map_err(Error::format(&p))?;
        let field = |k: &str| v.get(k).ok_or_else(|| Error::Format { path: p.clone(), why: format!("no \"{k}\"") });
        let name = field("checkpoint")?.as_str().unwrap_or_default().to_string();
        let file = self.path.join("checkpoints").join(&name);
        let want = field("bytes")?.as_u64().unwrap_or(0);
        let have = std::fs::metadata(&file).map(|m| m.len()).map_err(Error::io(&file))?;
        if have != want {
            return Err(Error::RunDir(format!(
                "{}: {have} bytes, but {want} were written: the file is damaged",
                file.display()
            )));
        }
        let tensors = checkpoint::load(&file)?;
        let progress =
            Progress { step: field("step")?.as_u64().unwrap_or(0), data_pos: field("data_pos")?.as_u64().unwrap_or(0) };
        Ok(Some((tensors, progress)))
    }

    /// The checkpoint of `step` (`None`: the one `latest.json` names), with the steps there
    /// are in the error when it is not kept.
    pub fn checkpoint(&self, step: Option<u64>) -> Result<Checkpoint, Error> {
        let Some(step) = step else {
            return self.latest()?.ok_or_else(|| Error::RunDir(format!("{}: no checkpoint yet", self.path.display())));
        };
        let name = format!("step-{step:08}.safetensors");
        let kept = self.checkpoints();
        if !kept.contains(&name) {
            let steps: Vec<String> = kept
                .iter()
                .filter_map(|n| n.strip_prefix("step-")?.strip_suffix(".safetensors")?.parse::<u64>().ok())
                .map(|s| s.to_string())
                .collect();
            return Err(Error::RunDir(format!(
                "{}: no checkpoint of step {step}; kept: {}",
                self.path.display(),
                if steps.is_empty() { "none".to_string() } else { steps.join(", ") }
            )));
        }
        let tensors = checkpoint::load(&self.path.join("checkpoints").join(name))?;
        // Where the data stream stood is only in latest.json; sampling does not need it.
        Ok((tensors, Progress { step, data_pos: 0 }))
    }
}
