//! Configuration in two stages.
//!
//! [`FileConfig`] is what a TOML file may say; [`Overrides`] is what flags and the environment
//! say (clap fills both, flags winning). [`Config::from_parts`] merges them over the embedded
//! defaults and validates everything without a single syscall; a bad value is an error that
//! names its key. Only then does `serve` resolve the result against the machine (create the
//! state directory, bind sockets).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::workstations::WorkstationSettings;
use periphery_workstation::qemu::AccelPreference;

/// The keys a config file may hold. Unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Appliance name, announced on the LAN.
    pub name: Option<String>,
    /// QUIC listen address.
    pub listen: Option<String>,
    /// Whether to announce by mDNS.
    pub discovery: Option<bool>,
    /// Pairing settings.
    #[serde(default)]
    pub pairing: PairingFile,
    /// Logging settings.
    #[serde(default)]
    pub log: LogFile,
    /// Workstation settings.
    #[serde(default)]
    pub workstations: WorkstationsFile,
    /// `[streaming]`.
    #[serde(default)]
    pub streaming: StreamingFile,
    /// `[render]`.
    #[serde(default)]
    pub render: RenderFile,
    /// `[files]`.
    #[serde(default)]
    pub files: FilesFile,
}

/// `[files]` table: when and how files persist.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesFile {
    /// Seconds changes must be quiet before a snapshot.
    pub quiet_secs: Option<u64>,
    /// The longest a changed tree waits under constant change, seconds.
    pub max_wait_secs: Option<u64>,
    /// Upload bandwidth, KiB per second (0: no limit).
    pub upload_limit_kib: Option<u64>,
    /// Seconds between scans for changes inotify missed.
    pub scan_every_secs: Option<u64>,
    /// Seconds between retention runs.
    pub retention_every_secs: Option<u64>,
    /// Retention keeps the last N snapshots of each tree,
    pub keep_last: Option<u32>,
    /// the last of each of D days,
    pub keep_daily: Option<u32>,
    /// and the last of each of W weeks.
    pub keep_weekly: Option<u32>,
}

/// `[render]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenderFile {
    /// Seconds a render node may stay silent before its lease expires and its task runs
    /// elsewhere.
    pub lease_timeout_secs: Option<u64>,
    /// Whether the appliance runs a render node of its own.
    pub local_node: Option<bool>,
}

/// `[streaming]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamingFile {
    /// Keep this many captured frames per streamed monitor, for `ws screenshot --sequence`
    /// (diagnostics: checking what tablets decode against what was captured). 0 = none.
    pub keep_source_frames: Option<usize>,
}

/// `[workstations]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkstationsFile {
    /// Window manager command of xvfb workstations (`[]` for none).
    pub window_manager: Option<Vec<String>>,
    /// Session command of xvfb workstations.
    pub session: Option<Vec<String>>,
    /// At most this many monitors per workstation.
    pub max_monitors: Option<usize>,
    /// Accelerator of qemu workstations: `auto` (probe KVM, fall back to TCG), `kvm`, `tcg`.
    pub accel: Option<String>,
    /// Seconds a graceful stop waits for a VM to power down.
    pub shutdown_timeout_secs: Option<u64>,
}

/// `[pairing]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairingFile {
    /// Seconds a pairing code stays valid.
    pub code_ttl_secs: Option<u64>,
    /// Failed attempts allowed per user or address within the window.
    pub max_failures: Option<u32>,
    /// The window, in seconds.
    pub failure_window_secs: Option<u64>,
    /// Seconds an unpaired connection may stay open.
    pub unpaired_window_secs: Option<u64>,
}

/// `[log]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogFile {
    /// `text` or `json`.
    pub format: Option<String>,
    /// A tracing filter such as `info` or `periphery=debug`.
    pub level: Option<String>,
}

/// Values from flags and the environment; each wins over the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--name` / `PERIPHERY_NAME`.
    pub name: Option<String>,
    /// `--listen` / `PERIPHERY_LISTEN`.
    pub listen: Option<String>,
    /// `--public`: listen on all interfaces.
    pub public: bool,
    /// `--no-discovery`.
    pub no_discovery: bool,
    /// `--log-format`.
    pub log_format: Option<String>,
    /// `--log-level` / `PERIPHERY_LOG`.
    pub log_level: Option<String>,
    /// `--no-local-node`.
    pub no_local_node: bool,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// State directory (database, identity, admin socket).
    pub state_dir: PathBuf,
    /// Appliance name.
    pub name: String,
    /// QUIC listen address.
    pub listen: SocketAddr,
    /// Announce by mDNS.
    pub discovery: bool,
    /// Pairing code lifetime.
    pub code_ttl: Duration,
    /// Failures allowed per window.
    pub max_failures: u32,
    /// Failure window.
    pub failure_window: Duration,
    /// How long an unpaired connection may stay open.
    pub unpaired_window: Duration,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter.
    pub log_level: String,
    /// How workstations run.
    pub workstations: WorkstationSettings,
    /// Captured frames kept per streamed monitor (diagnostics).
    pub keep_source_frames: usize,
    /// How long a silent render node keeps its lease.
    pub lease_timeout: Duration,
    /// Whether the appliance runs a render node of its own.
    pub local_node: bool,
    /// When and how files persist.
    pub files: periphery_persist::engine::Settings,
}

/// A configuration value is wrong; names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown keys.
    #[error("config file {path} is invalid")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message names the key and line.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// A value is out of range or malformed.
    #[error("config key `{key}`: {problem}")]
    Invalid {
        /// The key, e.g. `pairing.code_ttl_secs`.
        key: &'static str,
        /// What is wrong with it.
        problem: String,
    },
}

impl FileConfig {
    /// Reads and parses a config file.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    /// Parses TOML text.
    pub fn parse(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }
}

fn invalid(key: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        problem: problem.into(),
    }
}

/// Whether `name` works as a DNS label (and so as an mDNS instance and host name).
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

impl Config {
    /// Merges defaults, file and overrides, and validates. No syscalls.
    pub fn from_parts(
        state_dir: PathBuf,
        default_name: String,
        file: FileConfig,
        over: Overrides,
    ) -> Result<Self, ConfigError> {
        let name = over.name.or(file.name).unwrap_or(default_name);
        if !valid_name(&name) {
            return Err(invalid(
                "name",
                format!("'{name}' is not a valid host name (letters, digits and '-', at most 63)"),
            ));
        }
        let listen_text = match (over.listen, over.public) {
            (Some(l), _) => l,
            (None, true) => format!("0.0.0.0:{}", periphery_protocol::DEFAULT_PORT),
            (None, false) => file
                .listen
                .unwrap_or_else(|| format!("127.0.0.1:{}", periphery_protocol::DEFAULT_PORT)),
        };
        let listen: SocketAddr = listen_text.parse().map_err(|_| {
            invalid(
                "listen",
                format!("'{listen_text}' is not an address:port such as 127.0.0.1:4470"),
            )
        })?;
        let discovery = !over.no_discovery && file.discovery.unwrap_or(true);

        let code_ttl_secs = file.pairing.code_ttl_secs.unwrap_or(300);
        if !(1..=86_400).contains(&code_ttl_secs) {
            return Err(invalid(
                "pairing.code_ttl_secs",
                format!("{code_ttl_secs} is outside 1..=86400"),
            ));
        }
        let max_failures = file.pairing.max_failures.unwrap_or(5);
        if !(1..=1000).contains(&max_failures) {
            return Err(invalid(
                "pairing.max_failures",
                format!("{max_failures} is outside 1..=1000"),
            ));
        }
        let window_secs = file.pairing.failure_window_secs.unwrap_or(600);
        if !(1..=86_400).contains(&window_secs) {
            return Err(invalid(
                "pairing.failure_window_secs",
                format!("{window_secs} is outside 1..=86400"),
            ));
        }
        let unpaired_secs = file.pairing.unpaired_window_secs.unwrap_or(120);
        if !(1..=3600).contains(&unpaired_secs) {
            return Err(invalid(
                "pairing.unpaired_window_secs",
                format!("{unpaired_secs} is outside 1..=3600"),
            ));
        }
        let log_format = match over
            .log_format
            .or(file.log.format)
            .as_deref()
            .unwrap_or("text")
        {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(invalid(
                    "log.format",
                    format!("'{other}' is neither 'text' nor 'json'"),
                ))
            }
        };
        let log_level = over
            .log_level
            .or(file.log.level)
            .unwrap_or_else(|| "info".into());
        if log_level.parse::<tracing_subscriber::EnvFilter>().is_err() {
            return Err(invalid(
                "log.level",
                format!("'{log_level}' is not a log filter such as 'info' or 'periphery=debug'"),
            ));
        }
        let mut workstations = WorkstationSettings::default();
        if let Some(wm) = file.workstations.window_manager {
            workstations.window_manager = wm;
        }
        if let Some(session) = file.workstations.session {
            workstations.session = session;
        }
        if let Some(n) = file.workstations.max_monitors {
            if !(1..=16).contains(&n) {
                return Err(invalid(
                    "workstations.max_monitors",
                    format!("{n} is outside 1..=16"),
                ));
            }
            workstations.limits.max_monitors = n;
        }
        if let Some(t) = file.workstations.shutdown_timeout_secs {
            if !(1..=600).contains(&t) {
                return Err(invalid(
                    "workstations.shutdown_timeout_secs",
                    format!("{t} is outside 1..=600"),
                ));
            }
            workstations.shutdown_timeout = Duration::from_secs(t);
        }
        if let Some(a) = file.workstations.accel {
            workstations.accel = match a.as_str() {
                "auto" => AccelPreference::Auto,
                "kvm" => AccelPreference::Kvm,
                "tcg" => AccelPreference::Tcg,
                other => {
                    return Err(invalid(
                        "workstations.accel",
                        format!("'{other}' is not auto, kvm or tcg"),
                    ))
                }
            };
        }
        let keep_source_frames = file.streaming.keep_source_frames.unwrap_or(0);
        if keep_source_frames > 240 {
            return Err(invalid(
                "streaming.keep_source_frames",
                format!("{keep_source_frames} is outside 0..=240"),
            ));
        }
        let lease_secs = file.render.lease_timeout_secs.unwrap_or(30);
        if !(2..=3600).contains(&lease_secs) {
            return Err(invalid(
                "render.lease_timeout_secs",
                format!("{lease_secs} is outside 2..=3600"),
            ));
        }
        let local_node = !over.no_local_node && file.render.local_node.unwrap_or(true);
        let files = files_settings(&file.files)?;
        Ok(Config {
            files,
            lease_timeout: Duration::from_secs(lease_secs),
            local_node,
            workstations,
            keep_source_frames,
            state_dir,
            name,
            listen,
            discovery,
            code_ttl: Duration::from_secs(code_ttl_secs),
            max_failures,
            failure_window: Duration::from_secs(window_secs),
            unpaired_window: Duration::from_secs(unpaired_secs),
            log_format,
            log_level,
        })
    }
}

fn files_settings(f: &FilesFile) -> Result<periphery_persist::engine::Settings, ConfigError> {
    let mut s = periphery_persist::engine::Settings::default();
    let secs =
        |key: &'static str, v: Option<u64>, range: std::ops::RangeInclusive<u64>, d: Duration| {
            match v {
                None => Ok(d),
                Some(v) if range.contains(&v) => Ok(Duration::from_secs(v)),
                Some(v) => Err(invalid(
                    key,
                    format!("{v} is outside {}..={}", range.start(), range.end()),
                )),
            }
        };
    s.policy.quiet = secs("files.quiet_secs", f.quiet_secs, 1..=86_400, s.policy.quiet)?;
    s.policy.max_wait = secs(
        "files.max_wait_secs",
        f.max_wait_secs,
        1..=7 * 86_400,
        s.policy.max_wait,
    )?;
    if s.policy.max_wait < s.policy.quiet {
        return Err(invalid(
            "files.max_wait_secs",
            "must not be shorter than files.quiet_secs",
        ));
    }
    s.scan_every = secs(
        "files.scan_every_secs",
        f.scan_every_secs,
        1..=86_400,
        s.scan_every,
    )?;
    s.policy.retention_every = secs(
        "files.retention_every_secs",
        f.retention_every_secs,
        60..=30 * 86_400,
        s.policy.retention_every,
    )?;
    s.upload_limit = f.upload_limit_kib.unwrap_or(0).saturating_mul(1024);
    s.keep.last = f.keep_last.unwrap_or(s.keep.last);
    s.keep.daily = f.keep_daily.unwrap_or(s.keep.daily);
    s.keep.weekly = f.keep_weekly.unwrap_or(s.keep.weekly);
    if s.keep.last == 0 {
        return Err(invalid(
            "files.keep_last",
            "0 would forget every snapshot: keep at least 1",
        ));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(toml: &str, over: Overrides) -> Result<Config, ConfigError> {
        let file = FileConfig::parse(toml).map_err(|e| ConfigError::Parse {
            path: "t.toml".into(),
            source: Box::new(e),
        })?;
        Config::from_parts("/tmp/s".into(), "periphery-test".into(), file, over)
    }

    #[test]
    fn defaults_listen_on_loopback() {
        let c = build("", Overrides::default()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:4470");
        assert!(c.discovery);
        assert_eq!(c.code_ttl, Duration::from_secs(300));
        assert_eq!(c.max_failures, 5);
    }

    #[test]
    fn flags_win_over_file() {
        let over = Overrides {
            listen: Some("127.0.0.1:9".into()),
            name: Some("flagname".into()),
            ..Default::default()
        };
        let c = build("name = \"filename\"\nlisten = \"127.0.0.1:8\"", over).unwrap();
        assert_eq!(c.listen.port(), 9);
        assert_eq!(c.name, "flagname");
        let c = build(
            "",
            Overrides {
                public: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(c.listen.ip().is_unspecified());
    }

    #[test]
    fn bad_values_name_their_key() {
        let e = build("listen = \"nope\"", Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("`listen`"), "{e}");
        let e = build("[pairing]\ncode_ttl_secs = 0", Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("pairing.code_ttl_secs"), "{e}");
        let e = build("[log]\nformat = \"xml\"", Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("log.format"), "{e}");
        let e = build("name = \"bad name\"", Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("`name`"), "{e}");
        let e = build(
            "[streaming]\nkeep_source_frames = 1000",
            Overrides::default(),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("streaming.keep_source_frames"),
            "{e}"
        );
        let e = build("[render]\nlease_timeout_secs = 1", Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("render.lease_timeout_secs"), "{e}");
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let Err(ConfigError::Parse { source, .. }) =
            build("[pairing]\ncode_tll_secs = 60", Overrides::default())
        else {
            panic!("unknown key accepted")
        };
        assert!(source.to_string().contains("code_tll_secs"), "{source}");
    }
}
