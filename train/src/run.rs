//! Run directories: the resolved config, the tokenizers, checkpoints (safetensors, written
//! atomically with a checksum and their progress in the metadata, the last K kept) and a
//! metrics log of one JSON object per line. A training process holds the directory's lock,
//! so two runs never write into one.

use crate::error::Error;
use muse_runtime::checkpoint::{self, Metadata};
use muse_runtime::HostTensor;
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` atomically (see [`muse_runtime::cache::write_atomic`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    muse_runtime::cache::write_atomic(path, bytes).map_err(Error::io(path))
}

/// A run directory.
pub struct RunDir {
    /// Its path.
    pub path: PathBuf,
    /// Checkpoints kept (older ones are deleted).
    pub keep: usize,
    /// The lock a training process holds while it writes here (released when dropped).
    _lock: Option<File>,
    /// Whether the note on a fallback from latest.json was printed (it is said once).
    noted: std::cell::Cell<bool>,
    /// Whether this process writes the run (rank 0 of a data-parallel run, or the only one);
    /// the other ranks read it and write nothing.
    pub writer: bool,
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

/// Where the items a run could not read are listed.
pub const SKIPPED: &str = "skipped.txt";

/// The lock file: locked exclusively by the training process, holding its PID.
const LOCK: &str = ".lock";

/// The metadata keys of a checkpoint's progress.
const STEP_KEY: &str = "muse.step";
const DATA_POS_KEY: &str = "muse.data_pos";

impl RunDir {
    /// The directory of a run to train in, locked for this process: for a new run it must not
    /// exist, be empty, or be a run without checkpoints; to resume it must be a run. Temporary
    /// files of interrupted writes are removed.
    pub fn for_training(path: &Path, keep: usize, resume: bool) -> Result<RunDir, Error> {
        if resume {
            RunDir::open(path)?;
        } else {
            refuse_foreign(path)?;
        }
        std::fs::create_dir_all(path.join("checkpoints")).map_err(Error::io(&path.join("checkpoints")))?;
        let lock = lock(path)?;
        let run = RunDir {
            path: path.to_path_buf(),
            keep: keep.max(1),
            _lock: Some(lock),
            noted: Default::default(),
            writer: true,
        };
        if !resume && !run.checkpoints().is_empty() {
            return Err(Error::RunDir(format!(
                "{} already holds a run: pass --resume {} to continue it, or choose another --out",
                path.display(),
                path.display()
            )));
        }
        let removed = run.remove_temporaries();
        if removed > 0 {
            muse_compiler::note!("{}: removed {removed} temporary file(s) of interrupted writes", path.display());
        }
        Ok(run)
    }

    /// The run directory as a data-parallel rank other than 0 sees it: read (a resumed run's
    /// checkpoint), never written, not locked; it need not exist yet.
    pub fn follower(path: &Path) -> RunDir {
        RunDir { path: path.to_path_buf(), keep: 1, _lock: None, noted: std::cell::Cell::new(true), writer: false }
    }

    /// Opens an existing run (for `--resume`, sampling, tokenizing).
    pub fn open(path: &Path) -> Result<RunDir, Error> {
        if !path.join("config.json").is_file() {
            return Err(Error::RunDir(format!("{}: not a muse run directory (no config.json)", path.display())));
        }
        Ok(RunDir { path: path.to_path_buf(), keep: 3, _lock: None, noted: Default::default(), writer: true })
    }

    /// Removes temporary files of interrupted atomic writes (only safe under the lock).
    fn remove_temporaries(&self) -> usize {
        let mut removed = 0;
        for dir in [self.path.clone(), self.path.join("checkpoints")] {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if muse_runtime::cache::is_temporary(&name) && std::fs::remove_file(e.path()).is_ok() {
                    removed += 1;
                }
            }
        }
        removed
    }

    /// The resolved config.
    pub fn config(&self) -> Result<serde_json::Value, Error> {
        let p = self.path.join("config.json");
        let text = std::fs::read_to_string(&p).map_err(Error::io(&p))?;
        serde_json::from_str(&text).map_err(Error::format(&p))
    }

    /// Writes the resolved config.
    pub fn write_config(&self, config: &serde_json::Value) -> Result<(), Error> {
        if !self.writer {
            return Ok(());
        }
        let text = serde_json::to_string_pretty(config).expect("JSON values serialise");
        write_atomic(&self.path.join("config.json"), text.as_bytes())
    }

    /// Appends one line to metrics.jsonl.
    pub fn log(&self, line: &serde_json::Value) -> Result<(), Error> {
        if !self.writer {
            return Ok(());
        }
        let p = self.path.join("metrics.jsonl");
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&p).map_err(Error::io(&p))?;
        // One write per line, so a line is never interleaved with another writer's.
        f.write_all(format!("{line}\n").as_bytes()).map_err(Error::io(&p))
    }

    /// Adds items that could not be read to `skipped.txt` (one per line, each once).
    pub fn list_skipped(&self, items: &[String]) -> Result<(), Error> {
        if !self.writer {
            return Ok(());
        }
        let p = self.path.join(SKIPPED);
        let mut lines: Vec<String> =
            std::fs::read_to_string(&p).unwrap_or_default().lines().map(str::to_string).collect();
        for i in items {
            let line = i.replace('\n', " ");
            if !lines.contains(&line) {
                lines.push(line);
            }
        }
        write_atomic(&p, format!("{}\n", lines.join("\n")).as_bytes())
    }

    /// Drops metrics lines of steps after `step` (a resumed run rewrites them), and lines
    /// that do not parse (torn by a crash).
    pub fn truncate_log(&self, step: u64) -> Result<(), Error> {
        if !self.writer {
            return Ok(());
        }
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

    /// Saves a checkpoint: the tensors in one safetensors file (with a checksum and the
    /// progress in its metadata), then `latest.json` naming it (each written atomically, so
    /// a crash leaves the previous checkpoint in force). Of the checkpoints up to this step,
    /// the oldest beyond `keep` are deleted; later steps (not of this run's history) are
    /// left alone.
    pub fn save(&self, tensors: &HashMap<String, HostTensor>, progress: &Progress) -> Result<PathBuf, Error> {
        let name = checkpoint_name(progress.step);
        let file = self.path.join("checkpoints").join(&name);
        if !self.writer {
            return Ok(file);
        }
        let meta: Metadata = [
            (STEP_KEY.to_string(), progress.step.to_string()),
            (DATA_POS_KEY.to_string(), progress.data_pos.to_string()),
        ]
        .into();
        checkpoint::save_with(&file, tensors, checkpoint::FloatWidth::F32, &meta)?;
        let bytes = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        let latest = serde_json::json!({
            "checkpoint": name, "step": progress.step, "data_pos": progress.data_pos, "bytes": bytes,
        });
        write_atomic(&self.path.join("latest.json"), latest.to_string().as_bytes())?;
        let mine: Vec<(u64, String)> = self.checkpoints().into_iter().filter(|(s, _)| *s <= progress.step).collect();
        for (_, old) in mine.iter().take(mine.len().saturating_sub(self.keep)) {
            std::fs::remove_file(self.path.join("checkpoints").join(old)).ok();
        }
        Ok(file)
    }

    /// Checkpoints as (step, file name), oldest first.
    pub fn checkpoints(&self) -> Vec<(u64, String)> {
        let mut v: Vec<(u64, String)> = std::fs::read_dir(self.path.join("checkpoints"))
            .map(|d| {
                d.filter_map(|e| {
                    let name = e.ok()?.file_name().into_string().ok()?;
                    let step = name.strip_prefix("step-")?.strip_suffix(".safetensors")?.parse().ok()?;
                    Some((step, name))
                })
                .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// The checkpoint to resume from: the one `latest.json` names, verified (size and
    /// checksum). When `latest.json` is missing or damaged, or its checkpoint does not
    /// verify, the newest checkpoint that verifies, with a note saying why. `None` when the
    /// run has no checkpoint; an error when it has some and none verifies.
    pub fn latest(&self) -> Result<Option<Checkpoint>, Error> {
        let why = match self.named_by_latest_json() {
            Ok(c) => return Ok(Some(c)),
            Err(why) => why,
        };
        let kept = self.checkpoints();
        if kept.is_empty() && why.is_none() {
            return Ok(None);
        }
        let mut failures = Vec::new();
        for (step, name) in kept.iter().rev() {
            match self.verified(name, None) {
                Ok((tensors, Some(progress))) => {
                    if self.noted.replace(true) {
                        return Ok(Some((tensors, progress)));
                    }
                    muse_compiler::note!(
                        "{}: {}; resuming from the newest checkpoint that verifies, step {step}",
                        self.path.display(),
                        why.as_deref().unwrap_or("no latest.json")
                    );
                    return Ok(Some((tensors, progress)));
                }
                Ok((_, None)) => {
                    failures.push(format!("{name}: no progress in its metadata (written by an older muse)"))
                }
                Err(e) => failures.push(e.to_string()),
            }
        }
        Err(Error::RunDir(format!(
            "{}: {}, and no checkpoint verifies{}",
            self.path.display(),
            why.as_deref().unwrap_or("no latest.json"),
            if failures.is_empty() { String::new() } else { format!(":\n  {}", failures.join("\n  ")) }
        )))
    }

    /// The checkpoint `latest.json` names; `Err(None)` when there is no latest.json,
    /// `Err(Some(why))` when it or its checkpoint is damaged.
    fn named_by_latest_json(&self) -> Result<Checkpoint, Option<String>> {
        let p = self.path.join("latest.json");
        let text = match std::fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(None),
            Err(e) => return Err(Some(format!("latest.json cannot be read ({e})"))),
        };
        let latest = Latest::parse(&text).map_err(|e| Some(format!("latest.json is damaged ({e})")))?;
        let (tensors, progress) = self
            .verified(&latest.checkpoint, Some(latest.bytes))
            .map_err(|e| Some(format!("the checkpoint latest.json names does not verify ({e})")))?;
        let claimed = Progress { step: latest.step, data_pos: latest.data_pos };
        match progress {
            Some(p) if p != claimed => Err(Some(format!(
                "latest.json says step {} at data position {}, but its checkpoint records step {} at {}",
                claimed.step, claimed.data_pos, p.step, p.data_pos
            ))),
            _ => Ok((tensors, claimed)),
        }
    }

    /// A checkpoint loaded and verified (its size when known, its checksum), with the
    /// progress its metadata records.
    fn verified(
        &self,
        name: &str,
        bytes: Option<u64>,
    ) -> Result<(HashMap<String, HostTensor>, Option<Progress>), Error> {
        if name.contains(['/', '\\']) || name.starts_with('.') {
            return Err(Error::RunDir(format!("`{name}` is not a checkpoint file name")));
        }
        let file = self.path.join("checkpoints").join(name);
        let have = std::fs::metadata(&file).map(|m| m.len()).map_err(Error::io(&file))?;
        if let Some(want) = bytes.filter(|&w| w != have) {
            return Err(Error::RunDir(format!(
                "{}: {have} bytes, but {want} were written: the file is damaged",
                file.display()
            )));
        }
        let (tensors, meta) = checkpoint::load_with_metadata(&file)?;
        let number = |k: &str| meta.get(k).and_then(|v| v.parse::<u64>().ok());
        let progress = match (number(STEP_KEY), number(DATA_POS_KEY)) {
            (Some(step), Some(data_pos)) => Some(Progress { step, data_pos }),
            _ => None,
        };
        Ok((tensors, progress))
    }

    /// The checkpoint of `step` (`None`: the one `latest.json` names), with the steps there
    /// are in the error when it is not kept.
    pub fn checkpoint(&self, step: Option<u64>) -> Result<Checkpoint, Error> {
        let Some(step) = step else {
            return self.latest()?.ok_or_else(|| Error::RunDir(format!("{}: no checkpoint yet", self.path.display())));
        };
        let name = checkpoint_name(step);
        let kept = self.checkpoints();
        if !kept.iter().any(|(s, _)| *s == step) {
            let steps: Vec<String> = kept.iter().map(|(s, _)| s.to_string()).collect();
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

fn checkpoint_name(step: u64) -> String {
    format!("step-{step:08}.safetensors")
}

/// `latest.json`, parsed strictly: every field present with its type.
struct Latest {
    checkpoint: String,
    step: u64,
    data_pos: u64,
    bytes: u64,
}

impl Latest {
    fn parse(text: &str) -> Result<Latest, String> {
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let field = |k: &str| v.get(k).ok_or_else(|| format!("no field \"{k}\""));
        let number =
            |k: &str| field(k)?.as_u64().ok_or_else(|| format!("field \"{k}\" must be a whole number, not {}", v[k]));
        let checkpoint = field("checkpoint")?
            .as_str()
            .ok_or_else(|| format!("field \"checkpoint\" must be a file name, not {}", v["checkpoint"]))?
            .to_string();
        Ok(Latest { checkpoint, step: number("step")?, data_pos: number("data_pos")?, bytes: number("bytes")? })
    }
}

/// Takes the run directory's lock for this process, or says which process holds it.
fn lock(path: &Path) -> Result<File, Error> {
    let p = path.join(LOCK);
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&p)
        .map_err(Error::io(&p))?;
    match f.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&p).unwrap_or_default();
            let holder = holder.trim();
            return Err(Error::RunDir(format!(
                "{} is in use: another muse process{} is training in it; wait for it to finish, or choose another --out",
                path.display(),
                if holder.is_empty() { String::new() } else { format!(" (PID {holder})") }
            )));
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&p)(e)),
    }
    f.set_len(0).map_err(Error::io(&p))?;
    f.write_all(std::process::id().to_string().as_bytes()).map_err(Error::io(&p))?;
    Ok(f)
}

/// Refuses to start a run in a folder that holds files and is not a muse run: the user's
/// own `config.json` must not be overwritten.
fn refuse_foreign(path: &Path) -> Result<(), Error> {
    let Ok(entries) = std::fs::read_dir(path) else { return Ok(()) };
    // What an earlier start that stopped before writing its config left behind.
    let leftover = |e: &std::fs::DirEntry| {
        let name = e.file_name();
        name == LOCK || (name == "checkpoints" && std::fs::read_dir(e.path()).is_ok_and(|mut d| d.next().is_none()))
    };
    let names: Vec<String> =
        entries.flatten().filter(|e| !leftover(e)).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    if names.is_empty() {
        return Ok(());
    }
    let is_run = std::fs::read_to_string(path.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .is_some_and(|c| c.get("args").is_some() && c.get("source_hash").is_some());
    if is_run {
        return Ok(());
    }
    Err(Error::RunDir(format!(
        "{} holds files and is not a muse run ({}{}): choose an empty or new folder for --out",
        path.display(),
        names.iter().take(3).cloned().collect::<Vec<_>>().join(", "),
        if names.len() > 3 { ", ..." } else { "" }
    )))
}
