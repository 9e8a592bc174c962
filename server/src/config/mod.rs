//! The command line: etcd's flag names and defaults for everything the
//! server supports, each also read from the `ETCD_*` environment variable
//! of the same name, so existing deployment files work unchanged.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

pub mod refused;

/// A flag whose value the server cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("URL scheme must be http or https (etcd's unix and unixs are not supported): {0}")]
    UnsupportedUrl(String),
    #[error("bad URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("--initial-cluster: {0}")]
    InitialCluster(String),
    #[error("couldn't find local name {0:?} in the initial cluster configuration")]
    NameNotInCluster(String),
    #[error("--initial-cluster has {name}={initial} but missing from --initial-advertise-peer-urls={advertised}")]
    PeerUrlsMismatch {
        name: String,
        initial: String,
        advertised: String,
    },
    #[error("initial cluster {0} has duplicate url")]
    DuplicateUrl(String),
    #[error("unexpected value {0:?} for --initial-cluster-state (use \"new\" or \"existing\")")]
    ClusterState(String),
    #[error("--election-timeout[{election}ms] should be at least as 5 times as --heartbeat-interval[{heartbeat}ms]")]
    ElectionTimeout { election: u64, heartbeat: u64 },
    #[error(
        "--election-timeout[{0}ms] is too long, and should be set less than {MAX_ELECTION_MS}ms"
    )]
    ElectionTimeoutTooLong(u64),
    #[error("{0}")]
    AuthToken(String),
    #[error("{0} is set, but kvserver has no such setting ({1}): unset it rather than run without what it asks for")]
    UnknownEnvironment(String, String),
    #[error("--heartbeat-interval must be at least 1 ms")]
    HeartbeatInterval,
    #[error("{0}")]
    AutoCompaction(String),
    #[error("--log-level {0:?}: use debug, info, warn, error, panic or fatal")]
    LogLevel(String),
    #[error("--logger {0:?}: only zap or capnslog (both log to stderr)")]
    Logger(String),
    #[error("--enable-v2 {0:?}: the v2 API is not served (use the v3 API, or --enable-v2=false)")]
    EnableV2(String),
    #[error("{flag} {value:?}: {reason}")]
    Refused {
        flag: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("--log-outputs {0:?}: use default, stderr, stdout or one file path")]
    LogOutputs(String),
}

/// An etcd-compatible, strongly consistent key-value server.
#[derive(Debug, Clone, Parser)]
#[command(name = "kvserver", version, about, long_about = None)]
pub struct Config {
    /// Human-readable name of this member.
    #[arg(
        help_heading = "Member",
        long,
        env = "ETCD_NAME",
        default_value = "default"
    )]
    pub name: String,

    /// Directory of the member's data (WAL and database); default
    /// `<name>.kvserver` in the current directory.
    #[arg(help_heading = "Member", long, env = "ETCD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// URLs to serve clients on (comma-separated; http only).
    #[arg(
        help_heading = "Member",
        long,
        env = "ETCD_LISTEN_CLIENT_URLS",
        default_value = "http://127.0.0.1:2379"
    )]
    pub listen_client_urls: String,

    /// URLs to listen on for peer traffic.
    #[arg(
        help_heading = "Member",
        long,
        env = "ETCD_LISTEN_PEER_URLS",
        default_value = "http://127.0.0.1:2380"
    )]
    pub listen_peer_urls: String,

    /// Applied entries between two raft log snapshots (WAL release points).
    #[arg(
        help_heading = "Member",
        long,
        env = "ETCD_SNAPSHOT_COUNT",
        default_value_t = 100_000
    )]
    pub snapshot_count: u64,

    /// Milliseconds between leader heartbeats (one raft tick).
    #[arg(
        help_heading = "Member",
        long,
        env = "ETCD_HEARTBEAT_INTERVAL",
        default_value_t = 100
    )]
    pub heartbeat_interval: u64,

    /// Milliseconds without a leader before an election.
    #[arg(
        help_heading = "Member",
        long,
        env = "ETCD_ELECTION_TIMEOUT",
        default_value_t = 1000
    )]
    pub election_timeout: u64,

    /// Database size that raises the NOSPACE alarm; 0 means 2 GiB.
    #[arg(
        help_heading = "Member",
        long,
        env = "ETCD_QUOTA_BACKEND_BYTES",
        default_value_t = 0
    )]
    pub quota_backend_bytes: i64,

    /// Largest request a client may send.
    #[arg(help_heading = "Member", long, env = "ETCD_MAX_REQUEST_BYTES", default_value_t = 1536 * 1024)]
    pub max_request_bytes: usize,

    /// Most operations in one transaction.
    #[arg(
        help_heading = "Member",
        long,
        env = "ETCD_MAX_TXN_OPS",
        default_value_t = 128
    )]
    pub max_txn_ops: usize,

    /// Most concurrent streams on one client connection.
    #[arg(help_heading = "Member", long, env = "ETCD_MAX_CONCURRENT_STREAMS", default_value_t = u32::MAX)]
    pub max_concurrent_streams: u32,

    /// How often a client may ping at the least while it has streams open
    /// (etcd's policy: a client pinging more often is disconnected with
    /// GOAWAY "too_many_pings"; 0: gRPC's default of 5 minutes).
    #[arg(help_heading = "Member", long, env = "ETCD_GRPC_KEEPALIVE_MIN_TIME", default_value = "5s",
          value_parser = humantime::parse_duration)]
    pub grpc_keepalive_min_time: Duration,

    /// How often the server pings an idle client connection (e.g. `2h`).
    #[arg(help_heading = "Member", long, env = "ETCD_GRPC_KEEPALIVE_INTERVAL", default_value = "2h",
          value_parser = humantime::parse_duration)]
    pub grpc_keepalive_interval: Duration,

    /// How long the server waits for a ping's answer before it closes the
    /// connection.
    #[arg(help_heading = "Member", long, env = "ETCD_GRPC_KEEPALIVE_TIMEOUT", default_value = "20s",
          value_parser = humantime::parse_duration)]
    pub grpc_keepalive_timeout: Duration,

    /// Client URLs this member tells the cluster and its clients about.
    #[arg(
        help_heading = "Clustering",
        long,
        env = "ETCD_ADVERTISE_CLIENT_URLS",
        default_value = ""
    )]
    pub advertise_client_urls: String,

    /// Peer URLs this member tells the cluster about.
    #[arg(
        help_heading = "Clustering",
        long,
        env = "ETCD_INITIAL_ADVERTISE_PEER_URLS",
        default_value = ""
    )]
    pub initial_advertise_peer_urls: String,

    /// The initial cluster: `name=peer-url,...`.
    #[arg(
        help_heading = "Clustering",
        long,
        env = "ETCD_INITIAL_CLUSTER",
        default_value = ""
    )]
    pub initial_cluster: String,

    /// `new` for a new cluster, `existing` to join a running one (after
    /// `etcdctl member add`; ignored once the data dir holds a WAL).
    #[arg(
        help_heading = "Clustering",
        long,
        env = "ETCD_INITIAL_CLUSTER_STATE",
        default_value = "new"
    )]
    pub initial_cluster_state: String,

    /// Token that makes the cluster ID unique to this cluster.
    #[arg(
        help_heading = "Clustering",
        long,
        env = "ETCD_INITIAL_CLUSTER_TOKEN",
        default_value = "etcd-cluster"
    )]
    pub initial_cluster_token: String,

    /// Raft's pre-vote: a member that was cut off asks whether it could
    /// win before it starts an election, so it does not depose a healthy
    /// leader when it comes back.
    #[arg(help_heading = "Clustering", long, env = "ETCD_PRE_VOTE", default_value_t = true, action = clap::ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true")]
    pub pre_vote: bool,

    /// Refuse membership changes that could cost the cluster its quorum
    /// (members not started, or not connected to this one for 5 s).
    #[arg(help_heading = "Clustering", long, env = "ETCD_STRICT_RECONFIG_CHECK", default_value_t = true,
          action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub strict_reconfig_check: bool,

    /// `periodic` (retention is a duration) or `revision` (retention is a
    /// number of revisions).
    #[arg(
        help_heading = "Clustering",
        long,
        env = "ETCD_AUTO_COMPACTION_MODE",
        default_value = "periodic"
    )]
    pub auto_compaction_mode: String,

    /// How much history auto-compaction keeps; 0 turns it off. A duration
    /// (`1h`, `30m`, or hours as a bare number) in periodic mode.
    #[arg(
        help_heading = "Clustering",
        long,
        env = "ETCD_AUTO_COMPACTION_RETENTION",
        default_value = "0"
    )]
    pub auto_compaction_retention: String,

    /// The v2 API is not served: `false` is accepted (deployment files
    /// often say so), `true` is refused.
    #[arg(help_heading = "Clustering", long, env = "ETCD_ENABLE_V2", hide = true)]
    pub enable_v2: Option<String>,

    #[command(flatten)]
    pub tls: crate::tls::TlsFlags,

    /// How clients' tokens are made: `simple` (random tokens kept in
    /// memory) or `jwt,pub-key=<file>,priv-key=<file>,sign-method=<alg>,
    /// ttl=<duration>` (signed tokens).
    #[arg(
        help_heading = "Auth",
        long,
        env = "ETCD_AUTH_TOKEN",
        default_value = "simple"
    )]
    pub auth_token: String,

    /// Seconds a simple token lives without use.
    #[arg(
        help_heading = "Auth",
        long,
        env = "ETCD_AUTH_TOKEN_TTL",
        default_value_t = 300
    )]
    pub auth_token_ttl: u64,

    /// The bcrypt cost passwords are hashed with (4 to 31).
    #[arg(
        help_heading = "Auth",
        long,
        env = "ETCD_BCRYPT_COST",
        default_value_t = 10
    )]
    pub bcrypt_cost: u32,

    /// List of URLs to listen on for the metrics and health endpoints
    /// (`/metrics` and `/health` only).
    #[arg(
        help_heading = "Profiling and Monitoring",
        long,
        env = "ETCD_LISTEN_METRICS_URLS",
        default_value = ""
    )]
    pub listen_metrics_urls: String,

    /// `basic` or `extensive`: `extensive` adds the gRPC handling-time
    /// histograms (grpc_server_handling_seconds).
    #[arg(
        help_heading = "Profiling and Monitoring",
        long,
        env = "ETCD_METRICS",
        default_value = "basic",
        value_parser = ["basic", "extensive"]
    )]
    pub metrics: String,

    /// debug, info, warn, error, panic or fatal (the last two log errors
    /// only).
    #[arg(
        help_heading = "Logging",
        long,
        env = "ETCD_LOG_LEVEL",
        default_value = "info"
    )]
    pub log_level: String,

    /// Where logs go: `default` or `stderr`, `stdout`, or a file path
    /// (appended to).
    #[arg(
        help_heading = "Logging",
        long,
        env = "ETCD_LOG_OUTPUTS",
        default_value = "default"
    )]
    pub log_outputs: String,

    /// `text` (one human-readable line per event) or `json` (one JSON
    /// object per line, for log collectors); `console` is `text`.
    #[arg(
        help_heading = "Logging",
        long,
        env = "ETCD_LOG_FORMAT",
        default_value = "text",
        value_parser = ["text", "console", "json"]
    )]
    pub log_format: String,

    /// `zap` or `capnslog` (etcd's loggers): either way logs go to stderr,
    /// one line per event. Anything else is refused.
    #[arg(
        help_heading = "Logging",
        long,
        env = "ETCD_LOGGER",
        default_value = "zap",
        hide = true
    )]
    pub logger: String,

    /// Entries a leader keeps in its log after a raft snapshot, so that a
    /// follower that fell a little behind catches up from the log rather
    /// than by a whole snapshot.
    #[arg(
        help_heading = "Experimental",
        long,
        env = "ETCD_EXPERIMENTAL_SNAPSHOT_CATCHUP_ENTRIES",
        default_value_t = 5000
    )]
    pub experimental_snapshot_catchup_entries: u64,

    /// How often the leader records every lease's remaining TTL through
    /// raft (a restart or a new leader resumes leases from there), e.g.
    /// `5m`, `10s`.
    #[arg(help_heading = "Experimental", 
        long,
        env = "ETCD_EXPERIMENTAL_LEASE_CHECKPOINT_INTERVAL",
        default_value = "5m",
        value_parser = humantime::parse_duration
    )]
    pub experimental_lease_checkpoint_interval: Duration,

    /// Before serving, compare this member's HashKV with its peers' and
    /// refuse to start if they differ at the same revision.
    #[arg(help_heading = "Experimental", long, env = "ETCD_EXPERIMENTAL_INITIAL_CORRUPT_CHECK", default_value_t = false,
          action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub experimental_initial_corrupt_check: bool,

    /// How often the leader compares the members' HashKV (raising the
    /// CORRUPT alarm on a mismatch); 0 turns the check off.
    #[arg(help_heading = "Experimental", 
        long,
        env = "ETCD_EXPERIMENTAL_CORRUPT_CHECK_TIME",
        default_value = "0s",
        value_parser = humantime::parse_duration
    )]
    pub experimental_corrupt_check_time: Duration,

    /// How often a watch that asked for progress notifications gets one.
    #[arg(help_heading = "Experimental", long, env = "ETCD_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL",
          default_value = "10m", value_parser = humantime::parse_duration)]
    pub experimental_watch_progress_notify_interval: Duration,

    /// Applying one request for longer than this logs a warning.
    #[arg(help_heading = "Experimental", long, env = "ETCD_EXPERIMENTAL_WARNING_APPLY_DURATION",
          default_value = "100ms", value_parser = humantime::parse_duration)]
    pub experimental_warning_apply_duration: Duration,

    /// Skip verification of SAN field in client certificate for peer
    /// connections.
    #[arg(help_heading = "Experimental", long, env = "ETCD_EXPERIMENTAL_PEER_SKIP_CLIENT_SAN_VERIFICATION",
          default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1,
          default_missing_value = "true")]
    pub experimental_peer_skip_client_san_verification: bool,
}

/// What the auto-compactor keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoCompaction {
    Off,
    /// Keep this much time of history.
    Periodic(Duration),
    /// Keep this many revisions.
    Revision(i64),
}

impl Config {
    /// The `tracing` level `--log-level` names.
    pub fn tracing_level(&self) -> &str {
        match self.log_level.as_str() {
            "panic" | "fatal" => "error",
            other => other,
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("{}.kvserver", self.name)))
    }

    /// The database size above which NOSPACE is raised: etcd's default
    /// (2 GiB) for 0, none for a negative value (etcd turns the quota off).
    pub fn quota_bytes(&self) -> Option<i64> {
        match self.quota_backend_bytes {
            q if q < 0 => None,
            0 => Some(2 * 1024 * 1024 * 1024),
            q => Some(q),
        }
    }

    /// The addresses to listen on for clients, each with whether its URL
    /// is `https://`.
    pub fn client_listen_addrs(&self) -> Result<Vec<(SocketAddr, bool)>, ConfigError> {
        parse_urls(&self.listen_client_urls)
    }

    /// The addresses to listen on for metrics, each with whether its URL
    /// is `https://` (the client certificate serves them).
    pub fn metrics_listen_addrs(&self) -> Result<Vec<(SocketAddr, bool)>, ConfigError> {
        if self.listen_metrics_urls.trim().is_empty() {
            return Ok(Vec::new());
        }
        parse_urls(&self.listen_metrics_urls)
    }

    /// The addresses to listen on for peers, each with whether its URL is
    /// `https://`.
    pub fn peer_listen_addrs(&self) -> Result<Vec<(SocketAddr, bool)>, ConfigError> {
        parse_urls(&self.listen_peer_urls)
    }

    /// The TLS the flags ask for, resolved (auto TLS certificates made).
    pub fn tls(&self) -> Result<crate::tls::Tls, crate::tls::TlsError> {
        crate::tls::Tls::from_flags(
            &self.tls,
            self.experimental_peer_skip_client_san_verification,
            &self.data_dir(),
            // The metrics URLs are served with the client side's TLS.
            &[
                split(&self.listen_client_urls),
                split(&self.listen_metrics_urls),
            ]
            .concat(),
            &split(&self.listen_peer_urls),
        )
    }

    /// How long a request waits for raft (etcd's: 5 s plus two election
    /// timeouts).
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(5) + 2 * Duration::from_millis(self.election_timeout)
    }

    /// JWT tokens when `--auth-token jwt,...` asks for them (None:
    /// simple tokens).
    pub fn jwt_tokens(&self) -> Result<Option<crate::auth::jwt::JwtTokens>, ConfigError> {
        match self
            .auth_token
            .split_once(',')
            .map_or((self.auth_token.as_str(), ""), |(a, b)| (a, b))
        {
            ("simple", "") => Ok(None),
            ("jwt", options) => crate::auth::jwt::JwtTokens::from_options(options)
                .map(Some)
                .map_err(|e| ConfigError::AuthToken(e.to_string())),
            _ => Err(ConfigError::AuthToken(format!(
                "--auth-token {:?}: use simple or jwt,<options>",
                self.auth_token
            ))),
        }
    }

    /// The bcrypt cost to use: etcd falls back to 10 outside 4 to 31.
    pub fn bcrypt_cost(&self) -> u32 {
        if (4..=31).contains(&self.bcrypt_cost) {
            self.bcrypt_cost
        } else {
            10
        }
    }

    /// Checks what the flags say together, as etcd does at start.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.jwt_tokens()?;
        if self.heartbeat_interval == 0 {
            return Err(ConfigError::HeartbeatInterval);
        }
        if self.election_timeout > MAX_ELECTION_MS {
            return Err(ConfigError::ElectionTimeoutTooLong(self.election_timeout));
        }
        if self.election_timeout < self.heartbeat_interval.saturating_mul(5) {
            return Err(ConfigError::ElectionTimeout {
                election: self.election_timeout,
                heartbeat: self.heartbeat_interval,
            });
        }
        match self.initial_cluster_state.as_str() {
            "new" => {}
            "existing" => {}
            other => return Err(ConfigError::ClusterState(other.to_string())),
        }
        if !matches!(
            self.log_level.as_str(),
            "debug" | "info" | "warn" | "error" | "panic" | "fatal"
        ) {
            return Err(ConfigError::LogLevel(self.log_level.clone()));
        }
        if !matches!(self.logger.as_str(), "zap" | "capnslog") {
            return Err(ConfigError::Logger(self.logger.clone()));
        }
        if self.log_outputs.contains(',') {
            return Err(ConfigError::LogOutputs(self.log_outputs.clone()));
        }
        if let Some(v) = &self.enable_v2 {
            if v != "false" {
                return Err(ConfigError::EnableV2(v.clone()));
            }
        }
        self.client_listen_addrs()?;
        self.peer_listen_addrs()?;
        self.metrics_listen_addrs()?;
        self.auto_compaction()?;
        Ok(())
    }

    /// Refuses `ETCD_*` variables that name no setting of kvserver (etcd's
    /// TLS variables, say): the operator asked for something that would
    /// otherwise silently not happen.
    pub fn check_environment(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(), ConfigError> {
        use clap::CommandFactory;
        let cmd = Config::command();
        let known: Vec<String> = cmd
            .get_arguments()
            .filter_map(|a| a.get_env())
            .map(|e| e.to_string_lossy().into_owned())
            .chain(refused::env_names())
            .collect();
        for (name, _) in vars {
            if name.starts_with("ETCD_") && !known.contains(&name) {
                let flag = format!(
                    "--{}",
                    name.trim_start_matches("ETCD_")
                        .to_lowercase()
                        .replace('_', "-")
                );
                return Err(ConfigError::UnknownEnvironment(name, flag));
            }
        }
        Ok(())
    }

    /// The client URLs advertised (the listen URLs when none are given).
    pub fn client_urls(&self) -> Vec<String> {
        let urls = if self.advertise_client_urls.is_empty() {
            &self.listen_client_urls
        } else {
            &self.advertise_client_urls
        };
        split(urls)
    }

    pub fn peer_urls(&self) -> Vec<String> {
        let urls = if self.initial_advertise_peer_urls.is_empty() {
            &self.listen_peer_urls
        } else {
            &self.initial_advertise_peer_urls
        };
        split(urls)
    }

    pub fn auto_compaction(&self) -> Result<AutoCompaction, ConfigError> {
        let r = self.auto_compaction_retention.trim();
        match self.auto_compaction_mode.as_str() {
            "periodic" => {
                let d = parse_retention(r).map_err(ConfigError::AutoCompaction)?;
                Ok(if d.is_zero() {
                    AutoCompaction::Off
                } else {
                    AutoCompaction::Periodic(d)
                })
            }
            "revision" => {
                let n: i64 = r.parse().map_err(|_| {
                    ConfigError::AutoCompaction(format!("invalid revision retention {r:?}"))
                })?;
                Ok(if n <= 0 {
                    AutoCompaction::Off
                } else {
                    AutoCompaction::Revision(n)
                })
            }
            m => Err(ConfigError::AutoCompaction(format!(
                "unknown auto-compaction mode {m:?}"
            ))),
        }
    }
}

/// etcd's bound on `--election-timeout` (its maxElectionMs).
pub const MAX_ELECTION_MS: u64 = 50_000;

fn split(urls: &str) -> Vec<String> {
    urls.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

fn parse_urls(urls: &str) -> Result<Vec<(SocketAddr, bool)>, ConfigError> {
    split(urls).iter().map(|u| parse_listen_url(u)).collect()
}

/// A URL to listen on, read as etcd reads it: `http` or `https`, an
/// explicit port, no path, and an IP address (or `localhost`) as the
/// host, since a name would leave open which address is bound. Returns the
/// address and whether it serves TLS.
fn parse_listen_url(u: &str) -> Result<(SocketAddr, bool), ConfigError> {
    let bad = |reason: &str| ConfigError::BadUrl {
        url: u.to_string(),
        reason: reason.to_string(),
    };
    let uri: http::Uri = u
        .parse()
        .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(ConfigError::UnsupportedUrl(u.to_string())),
    };
    let (Some(host), Some(port)) = (uri.host(), uri.port_u16()) else {
        return Err(bad(r#"URL address does not have the form "host:port""#));
    };
    if uri.path() != "/" || uri.query().is_some() {
        return Err(bad("URL must not contain a path"));
    }
    let ip = if host == "localhost" {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        // An IPv6 host keeps its brackets in the URI.
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        bare.parse::<IpAddr>()
            .map_err(|_| bad("expected IP in URL for binding"))?
    };
    Ok((SocketAddr::new(ip, port), tls))
}

/// etcd's periodic retention: a Go duration (`1h30m`, `10s`) or a bare
/// number of hours.
fn parse_retention(s: &str) -> Result<Duration, String> {
    // etcd: a whole number of hours, else a duration.
    if let Ok(hours) = s.parse::<u64>() {
        return hours
            .checked_mul(3600)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("retention {s:?} is out of range"));
    }
    // Go's durations as humantime reads them ("30m", "1h30m", "500ms");
    // "inf", "NaN", a sign or a fraction are errors, never a panic.
    humantime::parse_duration(s).map_err(|e| format!("invalid retention {s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_parses_like_etcd() {
        assert_eq!(parse_retention("1").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_retention("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_retention("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_retention("0").unwrap(), Duration::ZERO);
        assert_eq!(
            parse_retention("500ms").unwrap(),
            Duration::from_millis(500)
        );
        for bad in [
            "5x",
            "5h3",
            "inf",
            "NaN",
            "-1",
            "-1h",
            "1e400",
            "99999999999999999999",
            "",
        ] {
            assert!(parse_retention(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn flags_are_honoured_or_refused() {
        let parse = |args: &[&str]| {
            let mut argv = vec!["kvserver"];
            argv.extend_from_slice(args);
            Config::try_parse_from(argv).unwrap().validate()
        };
        assert_eq!(parse(&[]), Ok(()));
        assert_eq!(
            parse(&["--election-timeout", "400", "--heartbeat-interval", "100"]),
            Err(ConfigError::ElectionTimeout {
                election: 400,
                heartbeat: 100
            })
        );
        assert_eq!(parse(&["--initial-cluster-state", "existing"]), Ok(()));
        let env = |k: &str| vec![(k.to_string(), "x".to_string())];
        assert_eq!(Config::check_environment(env("ETCD_NAME")), Ok(()));
        assert_eq!(Config::check_environment(env("ETCDCTL_API")), Ok(()));
        assert_eq!(
            Config::check_environment(env("ETCD_NO_SUCH_FLAG")),
            Err(ConfigError::UnknownEnvironment(
                "ETCD_NO_SUCH_FLAG".into(),
                "--no-such-flag".into()
            ))
        );
        assert_eq!(
            Config::check_environment(env("ETCD_PEER_TRUSTED_CA_FILE")),
            Ok(())
        );
        assert!(matches!(
            parse(&["--initial-cluster-state", "bogus"]),
            Err(ConfigError::ClusterState(_))
        ));
        assert!(matches!(
            parse(&["--log-level", "chatty"]),
            Err(ConfigError::LogLevel(_))
        ));
        assert!(matches!(
            parse(&["--logger", "syslog"]),
            Err(ConfigError::Logger(_))
        ));
        assert_eq!(parse(&["--enable-v2", "false"]), Ok(()));
        assert!(matches!(
            parse(&["--enable-v2", "true"]),
            Err(ConfigError::EnableV2(_))
        ));
        assert!(parse(&["--pre-vote", "false"]).is_ok());
        let c = Config::try_parse_from(["kvserver", "--election-timeout", "2000"]).unwrap();
        assert_eq!(c.request_timeout(), Duration::from_secs(9));
    }

    #[test]
    fn urls_become_addresses() {
        assert_eq!(
            parse_urls("http://127.0.0.1:2379,http://localhost:4000").unwrap(),
            vec![
                ("127.0.0.1:2379".parse::<SocketAddr>().unwrap(), false),
                ("127.0.0.1:4000".parse().unwrap(), false)
            ]
        );
        assert_eq!(
            parse_urls("https://127.0.0.1:1").unwrap(),
            vec![("127.0.0.1:1".parse().unwrap(), true)]
        );
        assert_eq!(
            parse_urls("http://[::1]:7/").unwrap(),
            vec![("[::1]:7".parse().unwrap(), false)]
        );
        assert!(matches!(
            parse_urls("unix://x"),
            Err(ConfigError::UnsupportedUrl(_))
        ));
        for (bad, reason) in [
            ("http://127.0.0.1", "host:port"),
            ("http://127.0.0.1:2379/v3", "path"),
            ("http://127.0.0.1:2379?x=1", "path"),
            ("http://example.com:2379", "expected IP"),
            ("http://127.0.0.1:99999", ""),
            ("http://", ""),
        ] {
            match parse_urls(bad) {
                Err(ConfigError::BadUrl { reason: r, .. }) => {
                    assert!(r.contains(reason), "{bad}: {r}")
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }
}
