//! Batches decoded ahead of training on a background thread, in a reproducible order: a
//! finite data set is shuffled anew each epoch by a permutation that is a function of the
//! seed and the epoch, so a run resumed at sample position `p` sees exactly the batches an
//! uninterrupted run would. Unreadable samples are skipped with a warning naming them, and
//! counted.

use super::{Dataset, Sample};
use muse_runtime::rng::mix64;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One batch and where the stream stands after it.
#[derive(Clone, Debug)]
pub struct Batch {
    /// The samples.
    pub samples: Vec<Sample>,
    /// Stream position after this batch (where a resumed run starts).
    pub next: u64,
}

/// The background loader.
pub struct Loader {
    rx: Receiver<Batch>,
    skipped: Arc<AtomicUsize>,
    unreadable: Arc<std::sync::Mutex<Vec<String>>>,
    waited: Duration,
    _worker: std::thread::JoinHandle<()>,
}

/// The data set index at stream position `pos`: position within a shuffled epoch.
pub fn index_at(len: Option<usize>, seed: u64, pos: u64) -> u64 {
    let Some(n) = len.map(|n| n as u64) else { return pos };
    let (epoch, i) = (pos / n, pos % n);
    permute(i, n, mix64(seed ^ mix64(epoch.wrapping_add(0x1234_5678))))
}

/// A bijection of 0..n keyed by `key`: a small Feistel network over the next power of two,
/// walked until it lands inside 0..n (cycle walking), so no table of n entries is needed.
fn permute(i: u64, n: u64, key: u64) -> u64 {
    if n <= 1 {
        return 0;
    }
    let bits = 64 - (n - 1).leading_zeros();
    let half = bits.div_ceil(2);
    let mask = (1u64 << half) - 1;
    let mut x = i;
    loop {
        let (mut l, mut r) = (x >> half, x & mask);
        for round in 0..4u64 {
            let f = mix64(r ^ key.wrapping_add(round.wrapping_mul(0x9e37_79b9_7f4a_7c15))) & mask;
            (l, r) = (r, l ^ f);
        }
        x = (l << half) | r;
        if x < n {
            return x;
        }
    }
}

impl Loader {
    /// Starts decoding batches of `batch` samples from stream position `start`, keeping up
    /// to `depth` batches ready.
    pub fn start(data: Arc<dyn Dataset>, seed: u64, start: u64, batch: usize, depth: usize) -> Loader {
        let (tx, rx) = sync_channel(depth.max(1));
        let skipped = Arc::new(AtomicUsize::new(0));
        let count = skipped.clone();
        let unreadable = Arc::new(std::sync::Mutex::new(Vec::new()));
        let list = unreadable.clone();
        let worker = std::thread::spawn(move || {
            let mut pos = start;
            let mut warned = std::collections::HashSet::new();
            loop {
                let mut samples = Vec::with_capacity(batch);
                let mut misses = 0usize;
                while samples.len() < batch {
                    let index = index_at(data.size(), seed, pos);
                    pos += 1;
                    match data.get(index) {
                        Ok(s) => {
                            samples.push(s);
                            misses = 0;
                        }
                        Err(why) => {
                            count.fetch_add(1, Ordering::Relaxed);
                            if warned.insert(index) {
                                muse_compiler::note!("warning: skipping {why}");
                                list.lock().unwrap_or_else(|e| e.into_inner()).push(why.to_string());
                            }
                            misses += 1;
                            if data.size().is_some_and(|n| misses > n) {
                                muse_compiler::note!("error: no sample of the data set can be read");
                                return;
                            }
                        }
                    }
                }
                if tx.send(Batch { samples, next: pos }).is_err() {
                    return; // the trainer is done
                }
            }
        });
        Loader { rx, skipped, unreadable, waited: Duration::ZERO, _worker: worker }
    }

    /// The next batch (waiting for it if decoding is behind); `None` if no sample can be read.
    pub fn next_batch(&mut self) -> Option<Batch> {
        let t = Instant::now();
        let b = self.rx.recv().ok();
        self.waited += t.elapsed();
        b
    }

    /// Time spent waiting for batches so far.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// Samples skipped because they could not be read.
    pub fn skipped(&self) -> usize {
        self.skipped.load(Ordering::Relaxed)
    }

    /// Each sample skipped so far, once, with why.
    pub fn unreadable(&self) -> Vec<String> {
        self.unreadable.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_epoch_is_a_permutation() {
        for n in [1u64, 2, 7, 64, 1000] {
            for epoch in 0..3 {
                let mut seen: Vec<u64> = (0..n).map(|i| index_at(Some(n as usize), 9, epoch * n + i)).collect();
                seen.sort();
                assert_eq!(seen, (0..n).collect::<Vec<_>>(), "n {n} epoch {epoch}");
            }
        }
        let a: Vec<u64> = (0..100).map(|i| index_at(Some(100), 9, i)).collect();
        let b: Vec<u64> = (100..200).map(|i| index_at(Some(100), 9, i)).collect();
        assert_ne!(a, b, "epochs are shuffled differently");
        assert_ne!(a, (0..100).collect::<Vec<_>>(), "shuffled at all");
    }
}
