//! A fault-injecting hook for tests: what a member's transport drops or
//! delays, read from the file named by `KVSERVER_TEST_PEER_FAULTS`. Never
//! set outside tests; when set, the member says so in its log.
//!
//! The file is read again every 50 ms; each line is one rule about a peer
//! (its member ID in hex):
//!
//! ```text
//! drop <id>        nothing is sent to it, nothing from it is accepted
//! drop-out <id>    nothing is sent to it
//! drop-in <id>     nothing from it is accepted
//! delay <id> <ms>  what is sent to it waits this long first
//! cut-snapshot <id> a snapshot sent to it breaks off after its first chunk
//! ```
//!
//! An empty or missing file means no faults. Partitions are made by
//! writing `drop` rules on both sides.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::RwLock;
use std::time::Duration;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PeerFaults {
    pub drop_out: bool,
    pub drop_in: bool,
    pub delay: Duration,
    pub cut_snapshot: bool,
}

#[derive(Debug, Default)]
pub struct Faults {
    rules: RwLock<HashMap<u64, PeerFaults>>,
}

/// The environment variable naming the faults file.
pub const FAULTS_ENV: &str = "KVSERVER_TEST_PEER_FAULTS";

impl Faults {
    pub fn get(&self, peer: u64) -> PeerFaults {
        self.rules
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&peer)
            .cloned()
            .unwrap_or_default()
    }

    pub fn drops_out(&self, peer: u64) -> bool {
        self.get(peer).drop_out
    }

    pub fn drops_in(&self, peer: u64) -> bool {
        self.get(peer).drop_in
    }

    pub fn set(&self, rules: HashMap<u64, PeerFaults>) {
        *self.rules.write().unwrap_or_else(|e| e.into_inner()) = rules;
    }

    /// Polls the faults file, if the environment names one, until the
    /// runtime ends.
    pub fn watch_env(self: &std::sync::Arc<Self>) {
        let Some(path) = std::env::var_os(FAULTS_ENV).map(PathBuf::from) else {
            return;
        };
        tracing::warn!(
            "{FAULTS_ENV} is set: peer traffic follows the test faults in {}",
            path.display()
        );
        let faults = self.clone();
        tokio::spawn(async move {
            let mut last = None;
            loop {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                if last.as_ref() != Some(&text) {
                    let rules = parse(&text);
                    tracing::info!("test faults now: {rules:?}");
                    faults.set(rules);
                    last = Some(text);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
    }
}

/// Reads the rules of a faults file; lines it does not understand are
/// ignored (and logged).
pub fn parse(text: &str) -> HashMap<u64, PeerFaults> {
    let mut rules: HashMap<u64, PeerFaults> = HashMap::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(id) = words.get(1).and_then(|w| u64::from_str_radix(w, 16).ok()) else {
            if !line.trim().is_empty() {
                tracing::warn!("test faults: cannot read {line:?}");
            }
            continue;
        };
        let r = rules.entry(id).or_default();
        match (words[0], words.get(2)) {
            ("drop", None) => {
                r.drop_in = true;
                r.drop_out = true;
            }
            ("drop-out", None) => r.drop_out = true,
            ("drop-in", None) => r.drop_in = true,
            ("cut-snapshot", None) => r.cut_snapshot = true,
            ("delay", Some(ms)) => match ms.parse() {
                Ok(ms) => r.delay = Duration::from_millis(ms),
                Err(_) => tracing::warn!("test faults: cannot read {line:?}"),
            },
            _ => tracing::warn!("test faults: cannot read {line:?}"),
        }
    }
    rules
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse() {
        let r = parse("drop a1\ndrop-out 2\ndelay 2 30\ncut-snapshot 3\nnonsense\n");
        assert!(r[&3].cut_snapshot && !r[&3].drop_out);
        assert!(r[&0xa1].drop_in && r[&0xa1].drop_out);
        assert!(r[&2].drop_out && !r[&2].drop_in);
        assert_eq!(r[&2].delay, Duration::from_millis(30));
        assert_eq!(r.len(), 3);
    }
}
