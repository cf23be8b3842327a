//! Where a repository lives: a local directory or an S3-compatible bucket, parsed from what
//! `storage set` is given, and turned into rustic backends.

use std::collections::BTreeMap;
use std::path::PathBuf;

use rustic_backend::BackendOptions;
use rustic_core::{RepositoryBackends, RusticError};

/// Where a repository lives.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Target {
    /// A directory on a local (or mounted) file system.
    Local(PathBuf),
    /// A bucket on an S3-compatible service, path-style.
    S3(S3Target),
}

/// An S3-compatible bucket.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct S3Target {
    /// The service's URL (`https://s3.eu-west-1.amazonaws.com`, `http://127.0.0.1:9000`).
    pub endpoint: String,
    /// The region (any value for services that ignore it).
    pub region: String,
    /// The bucket; it must exist.
    pub bucket: String,
    /// The key prefix inside the bucket.
    pub prefix: String,
    /// The access key id.
    pub access_key: String,
    /// The secret key.
    pub secret_key: String,
}

impl std::fmt::Debug for S3Target {
    /// Everything but the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Target")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("access_key", &self.access_key)
            .finish_non_exhaustive()
    }
}

impl S3Target {
    fn options(&self) -> BTreeMap<String, String> {
        [
            ("bucket", self.bucket.as_str()),
            ("root", self.prefix.as_str()),
            ("endpoint", self.endpoint.as_str()),
            ("region", self.region.as_str()),
            ("access_key_id", self.access_key.as_str()),
            ("secret_access_key", self.secret_key.as_str()),
            // A request is retried 3 times (about 7 s in all) before the attempt fails;
            // the engine's own backoff takes it from there.
            ("retry", "3"),
            // Only what is given here: no AWS_* variables, no instance metadata.
            ("disable_config_load", "true"),
            ("disable_ec2_metadata", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    /// Asks the service for one key of the bucket: `NoSuchBucket` is an error naming it;
    /// anything else is left to the repository's own requests.
    pub(crate) fn bucket_exists(&self) -> Result<(), String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            let op =
                opendal::Operator::via_iter("s3", self.options()).map_err(|e| e.to_string())?;
            match op.list_with("/").limit(1).await {
                Err(e) if format!("{e:?}").contains("NoSuchBucket") => Err(format!(
                    "the service says bucket '{}' does not exist",
                    self.bucket
                )),
                _ => Ok(()),
            }
        })
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Local(p) => write!(f, "{}", p.display()),
            Target::S3(s) => write!(
                f,
                "s3://{}/{} at {}",
                s.bucket,
                s.prefix.trim_matches('/'),
                s.endpoint
            ),
        }
    }
}

/// Why a repository location could not be understood.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// Not a location this crate knows.
    #[error("'{0}' is not a repository location: use a local directory or s3://bucket/prefix")]
    Unknown(String),
    /// An S3 location without the bucket.
    #[error("'{0}' names no bucket: use s3://bucket/prefix")]
    NoBucket(String),
    /// An S3 location without an endpoint or region to find the service by.
    #[error("an S3 location needs --endpoint URL, or --region for AWS")]
    NoEndpoint,
    /// An S3 location without keys.
    #[error("an S3 location needs an access key and a secret key")]
    NoKeys,
}

impl Target {
    /// Reads a location: a local directory (absolute, or `local:DIR`), or `s3://bucket/prefix`
    /// with `endpoint` (default: AWS in `region`) and `keys` (access key, secret).
    pub fn parse(
        location: &str,
        endpoint: Option<&str>,
        region: Option<&str>,
        keys: Option<(String, String)>,
    ) -> Result<Target, TargetError> {
        if let Some(rest) = location.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(TargetError::NoBucket(location.to_owned()));
            }
            let endpoint = match (endpoint, region) {
                (Some(e), _) => e.to_owned(),
                (None, Some(r)) => format!("https://s3.{r}.amazonaws.com"),
                (None, None) => return Err(TargetError::NoEndpoint),
            };
            let (access_key, secret_key) = keys.ok_or(TargetError::NoKeys)?;
            return Ok(Target::S3(S3Target {
                endpoint,
                region: region.unwrap_or("us-east-1").to_owned(),
                bucket: bucket.to_owned(),
                prefix: prefix.trim_matches('/').to_owned(),
                access_key,
                secret_key,
            }));
        }
        let path = location.strip_prefix("local:").unwrap_or(location);
        if path.starts_with('/') {
            return Ok(Target::Local(PathBuf::from(path)));
        }
        Err(TargetError::Unknown(location.to_owned()))
    }

    pub(crate) fn backends(&self) -> Result<RepositoryBackends, Box<RusticError>> {
        match self {
            Target::Local(p) => BackendOptions::default()
                .repository(format!("local:{}", p.display()))
                .to_backends(),
            Target::S3(s) => {
                let options = s.options();
                BackendOptions::default()
                    .repository("opendal:s3")
                    .options(options)
                    .to_backends()
            }
        }
    }
}
