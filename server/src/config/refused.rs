//! etcd's flags that kvserver does not honour, each refused at start with
//! the reason (from the command line or its `ETCD_*` variable), unless its
//! value asks for what kvserver does anyway (`--proxy off`, say).
//!
//! They are taken by name, so an operator moving an etcd deployment over
//! reads why a flag cannot be used rather than "unexpected argument".

use super::ConfigError;

/// One refused flag: its name, the values that ask for nothing beyond
/// what kvserver does, and why others cannot be honoured.
struct Refused {
    flag: &'static str,
    same_as_kvserver: &'static [&'static str],
    reason: &'static str,
}

const REFUSED: &[Refused] = &[
    Refused { flag: "--config-file", same_as_kvserver: &[""], reason: "kvserver reads flags and ETCD_* variables only; pass the file's settings as flags" },
    Refused { flag: "--wal-dir", same_as_kvserver: &[""], reason: "the WAL is kept in <data-dir>/member/wal; a separate WAL directory is not supported" },
    Refused { flag: "--max-snapshots", same_as_kvserver: &[], reason: "kvserver keeps no snapshot files to rotate: its database is the snapshot" },
    Refused { flag: "--max-wals", same_as_kvserver: &[], reason: "kvserver removes WAL segments once its database covers them; their number cannot be capped otherwise" },
    Refused { flag: "--backend-batch-interval", same_as_kvserver: &[""], reason: "the database commits each applied batch of entries; the interval cannot be set" },
    Refused { flag: "--backend-batch-limit", same_as_kvserver: &["0"], reason: "the database commits each applied batch of entries; the limit cannot be set" },
    Refused { flag: "--discovery", same_as_kvserver: &[""], reason: "discovery is not supported; give --initial-cluster" },
    Refused { flag: "--discovery-fallback", same_as_kvserver: &[], reason: "discovery is not supported; give --initial-cluster" },
    Refused { flag: "--discovery-proxy", same_as_kvserver: &[""], reason: "discovery is not supported; give --initial-cluster" },
    Refused { flag: "--discovery-srv", same_as_kvserver: &[""], reason: "DNS discovery is not supported; give --initial-cluster" },
    Refused { flag: "--discovery-srv-name", same_as_kvserver: &[""], reason: "DNS discovery is not supported; give --initial-cluster" },
    Refused { flag: "--initial-election-tick-advance", same_as_kvserver: &["false"], reason: "a member waits a whole election timeout before its first election (a single member campaigns at once)" },
    Refused { flag: "--cors", same_as_kvserver: &["*"], reason: "the HTTP side allows every origin (*); a list of origins is not supported yet" },
    Refused { flag: "--host-whitelist", same_as_kvserver: &["*"], reason: "the HTTP side takes every Host (*); a list of hosts is not supported yet" },
    Refused { flag: "--enable-pprof", same_as_kvserver: &["false"], reason: "there is no pprof endpoint (profile kvserver with perf)" },
    Refused { flag: "--proxy", same_as_kvserver: &["off"], reason: "the v2 proxy is not supported" },
    Refused { flag: "--proxy-failure-wait", same_as_kvserver: &[], reason: "the v2 proxy is not supported" },
    Refused { flag: "--proxy-refresh-interval", same_as_kvserver: &[], reason: "the v2 proxy is not supported" },
    Refused { flag: "--proxy-dial-timeout", same_as_kvserver: &[], reason: "the v2 proxy is not supported" },
    Refused { flag: "--proxy-write-timeout", same_as_kvserver: &[], reason: "the v2 proxy is not supported" },
    Refused { flag: "--proxy-read-timeout", same_as_kvserver: &[], reason: "the v2 proxy is not supported" },
    Refused { flag: "--experimental-enable-v2v3", same_as_kvserver: &[""], reason: "the v2 API is not served" },
    Refused { flag: "--experimental-backend-bbolt-freelist-type", same_as_kvserver: &[], reason: "kvserver's database is its own B+tree, not bbolt (btree/FORMAT.md)" },
    Refused { flag: "--experimental-enable-lease-checkpoint", same_as_kvserver: &["true"], reason: "lease checkpoints are always on (--experimental-lease-checkpoint-interval sets how often)" },
    Refused { flag: "--experimental-compaction-batch-limit", same_as_kvserver: &[], reason: "a compaction removes its revisions in batches of its own size" },
    Refused { flag: "--force-new-cluster", same_as_kvserver: &["false"], reason: "not supported: restore a snapshot into a new cluster with `kvtool snapshot restore`" },
];

/// The environment variable etcd reads for `flag`.
fn env_name(flag: &str) -> String {
    format!(
        "ETCD_{}",
        flag.trim_start_matches('-')
            .replace('-', "_")
            .to_uppercase()
    )
}

/// Takes etcd's refused flags out of `args` (when their values ask for
/// nothing kvserver does not do) or refuses them; `env` is checked the
/// same way. Returns the arguments left for the parser.
pub fn take(args: Vec<String>, env: &[(String, String)]) -> Result<Vec<String>, ConfigError> {
    let check = |r: &Refused, value: &str| {
        if r.same_as_kvserver.contains(&value) {
            Ok(())
        } else {
            Err(ConfigError::Refused {
                flag: r.flag,
                value: value.to_string(),
                reason: r.reason,
            })
        }
    };
    for r in REFUSED {
        let name = env_name(r.flag);
        if let Some((_, v)) = env.iter().find(|(k, _)| *k == name) {
            check(r, v)?;
        }
    }
    let mut left = Vec::with_capacity(args.len());
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        // Go's flags take `--flag=value`, `--flag value`, and a bare
        // `--flag` for booleans.
        let (name, inline) = match a.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (a.clone(), None),
        };
        let Some(r) = REFUSED.iter().find(|r| r.flag == name) else {
            left.push(a);
            continue;
        };
        let value = match inline {
            Some(v) => v,
            None if r.same_as_kvserver == ["true"] || r.same_as_kvserver == ["false"] => {
                "true".to_string()
            }
            None => it.next().unwrap_or_default(),
        };
        check(r, &value)?;
    }
    Ok(left)
}

/// The names of the variables the refused flags are read from (they are
/// not "unknown" to kvserver).
pub fn env_names() -> impl Iterator<Item = String> {
    REFUSED.iter().map(|r| env_name(r.flag))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn refused_unless_they_ask_for_what_kvserver_does() {
        let none: Vec<(String, String)> = Vec::new();
        assert_eq!(
            take(
                args(&[
                    "kvserver",
                    "--proxy",
                    "off",
                    "--name",
                    "x",
                    "--enable-pprof=false"
                ]),
                &none
            )
            .unwrap(),
            args(&["kvserver", "--name", "x"])
        );
        let e = take(args(&["kvserver", "--wal-dir", "/wal"]), &none).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--wal-dir \"/wal\": the WAL is kept in <data-dir>/member/wal; a separate WAL directory is not supported"
        );
        assert!(take(args(&["kvserver", "--force-new-cluster"]), &none).is_err());
        assert!(take(args(&["kvserver", "--max-wals=5"]), &none).is_err());
        let env = vec![("ETCD_DISCOVERY".to_string(), "https://d".to_string())];
        assert!(take(args(&["kvserver"]), &env).is_err());
        let env = vec![("ETCD_PROXY".to_string(), "off".to_string())];
        assert!(take(args(&["kvserver"]), &env).is_ok());
        assert!(env_names().any(|n| n == "ETCD_EXPERIMENTAL_ENABLE_V2V3"));
    }
}
