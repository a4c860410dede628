//! The one home of AWS access: building SDK clients (region, profile, endpoint,
//! timeouts), errors that name the operation, region and resource, the one retry layer,
//! the one paging loop and the one poll loop, the shared EC2 and SSM listings, ec2ami's
//! views of an AMI and a snapshot, and every `ec2ami:*` tag key. Stages call it; none
//! re-implements a listing.
//!
//! The SDK's own retries are switched off: [`retry`] is the only retry layer, so a
//! request is never retried by two stacked loops.

pub(crate) mod ec2;
pub(crate) mod error;
pub(crate) mod lifecycle;
pub(crate) mod model;
pub(crate) mod paging;
pub(crate) mod poll;
pub(crate) mod quotas;
pub(crate) mod rbin;
pub(crate) mod retry;
pub(crate) mod s3;
pub(crate) mod sns;
pub(crate) mod ssm;
pub(crate) mod tags;

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{Region, SdkConfig};

pub use error::{AwsError, AwsFailure, ErrorClass, HasStatus, classify_code};
pub use model::{Ami, Snapshot};
pub use retry::{Call, RetryPolicy};

/// Where and how to reach AWS: the global command-line options.
#[derive(Debug, Clone, Default)]
pub struct AwsOptions {
    /// Region; falls back to the standard chain (AWS_REGION, profile).
    pub region: Option<String>,
    /// Named profile from the shared config files.
    pub profile: Option<String>,
    /// Endpoint override for every service (also read from `AWS_ENDPOINT_URL` by the SDK).
    pub endpoint_url: Option<String>,
    /// Timeouts applied to every request.
    pub timeouts: Timeouts,
    /// Explicit credentials instead of the standard chain (a bsdec2-image-upload key
    /// file); their Debug output hides the secret.
    pub credentials: Option<aws_sdk_ec2::config::Credentials>,
}

/// Explicit network timeouts: uploads without them hang forever on a stalled socket.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TCP + TLS connect.
    pub connect: Duration,
    /// Time to the first byte of a response (and between reads).
    pub read: Duration,
    /// One attempt of one operation, start to finish.
    pub attempt: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(10),
            read: Duration::from_secs(60),
            attempt: Duration::from_secs(120),
        }
    }
}

/// SDK clients sharing one configuration.
#[derive(Clone, Debug)]
pub struct Clients {
    /// The resolved configuration (region, credentials, endpoint).
    pub config: SdkConfig,
    /// EBS direct APIs.
    pub ebs: aws_sdk_ebs::Client,
    /// EC2.
    pub ec2: aws_sdk_ec2::Client,
    /// SSM (parameters).
    pub ssm: aws_sdk_ssm::Client,
    /// Recycle Bin (retention rules).
    pub rbin: aws_sdk_rbin::Client,
    /// Service Quotas (the public AMI quota).
    pub quotas: aws_sdk_servicequotas::Client,
}

impl Clients {
    /// Clients for `config` (which must name a region).
    pub fn from_config(config: SdkConfig) -> Clients {
        Clients {
            ebs: aws_sdk_ebs::Client::new(&config),
            ec2: aws_sdk_ec2::Client::new(&config),
            ssm: aws_sdk_ssm::Client::new(&config),
            rbin: aws_sdk_rbin::Client::new(&config),
            quotas: aws_sdk_servicequotas::Client::new(&config),
            config,
        }
    }

    /// The same credentials, endpoint and timeouts, in another region.
    pub fn in_region(&self, region: &str) -> Clients {
        Clients::from_config(
            self.config
                .to_builder()
                .region(Region::new(region.to_string()))
                .build(),
        )
    }

    /// The region these clients talk to.
    pub fn region(&self) -> &str {
        self.config.region().map(|r| r.as_ref()).unwrap_or("?")
    }

    /// A call of `operation` in these clients' region (for [`RetryPolicy::send`]).
    pub fn call(&self, operation: &'static str) -> Call {
        Call::new(operation, self.region())
    }
}

/// Resolve the configuration through the standard chain and build the clients.
pub async fn connect(opts: &AwsOptions) -> Result<Clients, AwsError> {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(opts.timeouts.connect)
                .read_timeout(opts.timeouts.read)
                .operation_attempt_timeout(opts.timeouts.attempt)
                .build(),
        );
    if let Some(region) = &opts.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(profile) = &opts.profile {
        check_profile(profile).await?;
        loader = loader.profile_name(profile);
    }
    if let Some(url) = &opts.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    if let Some(creds) = &opts.credentials {
        loader = loader.credentials_provider(creds.clone());
    }
    let config = loader.load().await;
    match config.region() {
        None => {
            return Err(AwsError::config(
                "no AWS region: pass --region or set AWS_REGION (or a region in your profile)",
            ));
        }
        Some(r) => crate::validate_input::region(r.as_ref()).map_err(AwsError::config)?,
    };
    let config = match (&opts.profile, &opts.credentials) {
        // An explicit profile wins over the environment's keys, as with the AWS CLI (the
        // SDK's default chain reads the environment first): its own provider, in the
        // region and with the timeouts resolved above.
        (Some(profile), None) => {
            let provider_config = aws_config::provider_config::ProviderConfig::default()
                .with_region(config.region().cloned())
                .with_timeout_config(
                    config
                        .timeout_config()
                        .cloned()
                        .unwrap_or_else(|| TimeoutConfig::builder().build()),
                );
            let provider = aws_config::profile::ProfileFileCredentialsProvider::builder()
                .configure(&provider_config)
                .profile_name(profile)
                .build();
            config
                .to_builder()
                .credentials_provider(
                    aws_credential_types::provider::SharedCredentialsProvider::new(provider),
                )
                .build()
        }
        _ => config,
    };
    Ok(Clients::from_config(config))
}

/// An explicit `--profile` must exist in the shared config files (`AWS_CONFIG_FILE`,
/// `AWS_SHARED_CREDENTIALS_FILE`, or `~/.aws/config` and `~/.aws/credentials`): a
/// misspelt one is an error naming it, never silently replaced by other credentials.
async fn check_profile(name: &str) -> Result<(), AwsError> {
    let shown = crate::image::escaped(name);
    let fs = aws_types::os_shim_internal::Fs::real();
    let env = aws_types::os_shim_internal::Env::real();
    #[allow(deprecated)] // the default list of files: the SDK's own choice
    let files = aws_config::profile::profile_file::ProfileFiles::default();
    let set = aws_config::profile::load(&fs, &env, &files, None)
        .await
        .map_err(|e| {
            AwsError::config(format!(
                "cannot read the AWS config files for profile `{shown}`: {e}"
            ))
        })?;
    if set.get_profile(name).is_some() {
        return Ok(());
    }
    let mut known: Vec<&str> = set.profiles().collect();
    known.sort();
    let known = if known.is_empty() {
        "there is none".to_string()
    } else {
        format!("profiles there: {}", known.join(", "))
    };
    Err(AwsError::config(format!(
        "profile `{shown}` is not defined in the AWS config or credentials file \
         (AWS_CONFIG_FILE, AWS_SHARED_CREDENTIALS_FILE, ~/.aws/config, ~/.aws/credentials; {known})"
    )))
}
