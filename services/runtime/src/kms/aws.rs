//! AWS KMS through `aws-sdk-kms`: GenerateDataKey, Decrypt and ReEncrypt
//! with an encryption context naming the scope. Credentials come from the
//! SDK's default chain (IAM Roles for Service Accounts on Kubernetes); the
//! endpoint can be overridden for VPC endpoints and test servers.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::DataKeySpec;

use super::{DataKey, EncryptionContext, Error, Kms, SecretKey, WrappedKey};

/// Where and how to reach AWS KMS.
#[derive(Debug, Clone, Default)]
pub struct AwsSettings {
    /// The key (id, ARN or alias) new data keys are wrapped under.
    pub key_id: String,
    /// AWS region.
    pub region: String,
    /// Endpoint override.
    pub endpoint: Option<String>,
    /// Static credentials `(access key id, secret)` instead of the default
    /// chain, for KMS-compatible servers outside AWS.
    pub static_credentials: Option<(String, String)>,
}

/// The AWS KMS provider.
#[derive(Debug, Clone)]
pub struct AwsKms {
    client: aws_sdk_kms::Client,
    key_id: String,
}

fn context_map(context: &EncryptionContext) -> Option<HashMap<String, String>> {
    (!context.pairs().is_empty()).then(|| context.pairs().clone().into_iter().collect())
}

/// Maps an SDK failure onto [`Error`]. Service messages name keys and
/// operations, never key material.
fn classify<E, R>(err: SdkError<E, R>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    match err {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => {
            Error::Unavailable("cannot reach the kms".into())
        }
        SdkError::ServiceError(service) => {
            let e = service.err();
            let code = e.code().unwrap_or("unknown").to_owned();
            match code.as_str() {
                "InvalidCiphertextException" | "IncorrectKeyException" => Error::InvalidCiphertext,
                "NotFoundException"
                | "DisabledException"
                | "KMSInvalidStateException"
                | "KeyUnavailableException" => Error::KeyNotUsable(code),
                "AccessDeniedException" | "UnrecognizedClientException" => {
                    Error::AccessDenied(code)
                }
                "DependencyTimeoutException" | "KMSInternalException" | "ThrottlingException" => {
                    Error::Unavailable(code)
                }
                _ => Error::Other(code),
            }
        }
        other => Error::Other(format!("{other:?}").chars().take(200).collect()),
    }
}

impl AwsKms {
    /// A client for `settings`.
    pub async fn connect(settings: &AwsSettings) -> Self {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(settings.region.clone()));
        if let Some(endpoint) = &settings.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        if let Some((id, secret)) = &settings.static_credentials {
            loader = loader.credentials_provider(aws_sdk_kms::config::Credentials::new(
                id.clone(),
                secret.clone(),
                None,
                None,
                "confidant-static",
            ));
        }
        let config = loader.load().await;
        Self {
            client: aws_sdk_kms::Client::new(&config),
            key_id: settings.key_id.clone(),
        }
    }

    /// The SDK client (for administration such as creating keys in tests).
    pub fn client(&self) -> &aws_sdk_kms::Client {
        &self.client
    }
}

#[async_trait]
impl Kms for AwsKms {
    fn active_key_id(&self) -> String {
        self.key_id.clone()
    }

    async fn generate_data_key(&self, context: &EncryptionContext) -> Result<DataKey, Error> {
        let out = self
            .client
            .generate_data_key()
            .key_id(&self.key_id)
            .key_spec(DataKeySpec::Aes256)
            .set_encryption_context(context_map(context))
            .send()
            .await
            .map_err(classify)?;
        let plaintext =
            SecretKey::from_slice(out.plaintext().ok_or(Error::InvalidKeyMaterial)?.as_ref())?;
        let ciphertext = out
            .ciphertext_blob()
            .ok_or(Error::InvalidKeyMaterial)?
            .as_ref()
            .to_vec();
        Ok(DataKey {
            plaintext,
            wrapped: WrappedKey {
                key_id: out.key_id().unwrap_or(&self.key_id).to_owned(),
                ciphertext,
            },
        })
    }

    async fn decrypt(
        &self,
        wrapped: &WrappedKey,
        context: &EncryptionContext,
    ) -> Result<SecretKey, Error> {
        let out = self
            .client
            .decrypt()
            .key_id(&wrapped.key_id)
            .ciphertext_blob(Blob::new(wrapped.ciphertext.clone()))
            .set_encryption_context(context_map(context))
            .send()
            .await
            .map_err(classify)?;
        SecretKey::from_slice(out.plaintext().ok_or(Error::InvalidKeyMaterial)?.as_ref())
    }

    async fn rewrap(
        &self,
        wrapped: &WrappedKey,
        context: &EncryptionContext,
        destination_key_id: Option<&str>,
    ) -> Result<WrappedKey, Error> {
        let destination = destination_key_id.unwrap_or(&self.key_id);
        let out = self
            .client
            .re_encrypt()
            .ciphertext_blob(Blob::new(wrapped.ciphertext.clone()))
            .source_key_id(&wrapped.key_id)
            .set_source_encryption_context(context_map(context))
            .destination_key_id(destination)
            .set_destination_encryption_context(context_map(context))
            .send()
            .await
            .map_err(classify)?;
        Ok(WrappedKey {
            key_id: out.key_id().unwrap_or(destination).to_owned(),
            ciphertext: out
                .ciphertext_blob()
                .ok_or(Error::InvalidKeyMaterial)?
                .as_ref()
                .to_vec(),
        })
    }
}
