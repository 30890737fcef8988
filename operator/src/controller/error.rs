//! The error type shared by every controller, with a short metric label and an Event reason per
//! variant.

/// What can go wrong in a reconcile.
///
/// A user's mistake is not an [`Error`]: it becomes a condition on the object's status. This type
/// is for what a retry might fix, or what an operator of Overseer must look at.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request to the Kubernetes API failed.
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[source] kube::Error),
    /// A body could not be serialized or a response deserialized.
    #[error("serialization failed: {0}")]
    Serialization(#[source] serde_json::Error),
    /// A write was attempted while this replica is not the leader; nothing was written.
    #[error("not the leader: write skipped")]
    NotLeader,
    /// The object lacks a field the API server always sets (name, namespace, uid).
    #[error("object has no {0}")]
    MissingObjectKey(&'static str),
    /// A finalizer step failed.
    #[error("finalizer failed: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl From<kube::Error> for Error {
    fn from(e: kube::Error) -> Self {
        Self::Kube(e)
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Self::Serialization(e)
    }
}

impl From<kube::runtime::finalizer::Error<Error>> for Error {
    fn from(e: kube::runtime::finalizer::Error<Error>) -> Self {
        Self::Finalizer(Box::new(e))
    }
}

/// A convenient alias for results of controller code.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A short, fixed label for the `error` label of `overseer_reconcile_errors_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(e) => kube_label(e),
            Self::Serialization(_) => "serialization",
            Self::NotLeader => "not_leader",
            Self::MissingObjectKey(_) => "missing_object_key",
            Self::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.metric_label(),
                kube::runtime::finalizer::Error::AddFinalizer(e)
                | kube::runtime::finalizer::Error::RemoveFinalizer(e) => kube_label(e),
                kube::runtime::finalizer::Error::UnnamedObject
                | kube::runtime::finalizer::Error::InvalidFinalizer => "finalizer",
            },
        }
    }

    /// The `reason` of the Warning Event recorded for this error (UpperCamelCase, as Kubernetes
    /// reasons are).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Kube(e) => match kube_label(e) {
                "kube_api_conflict" => "ApiConflict",
                "kube_api_forbidden" => "ApiForbidden",
                "kube_api_not_found" => "ApiNotFound",
                "kube_api_invalid" => "ApiInvalid",
                "kube_transport" => "ApiUnreachable",
                _ => "ApiError",
            },
            Self::Serialization(_) => "SerializationFailed",
            Self::NotLeader => "NotLeader",
            Self::MissingObjectKey(_) => "MissingObjectKey",
            Self::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.reason(),
                _ => "FinalizerFailed",
            },
        }
    }

    /// Whether this is a skipped write on a follower, which is not a failure.
    pub fn is_not_leader(&self) -> bool {
        match self {
            Self::NotLeader => true,
            Self::Finalizer(inner) => matches!(
                inner.as_ref(),
                kube::runtime::finalizer::Error::ApplyFailed(e)
                    | kube::runtime::finalizer::Error::CleanupFailed(e) if e.is_not_leader()
            ),
            _ => false,
        }
    }
}

fn kube_label(e: &kube::Error) -> &'static str {
    match e {
        kube::Error::Api(status) => match status.code {
            409 => "kube_api_conflict",
            403 => "kube_api_forbidden",
            404 => "kube_api_not_found",
            422 => "kube_api_invalid",
            429 => "kube_api_throttled",
            500..=599 => "kube_api_server_error",
            _ => "kube_api",
        },
        kube::Error::HyperError(_) | kube::Error::Service(_) => "kube_transport",
        kube::Error::SerdeError(_) => "serialization",
        _ => "kube_client",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    fn api_error(code: u16) -> Error {
        Error::Kube(kube::Error::Api(Box::new(
            Status::failure("boom", "Reason").with_code(code),
        )))
    }

    #[test]
    fn labels_and_reasons_are_short_and_fixed() {
        let cases = [
            (api_error(409), "kube_api_conflict", "ApiConflict"),
            (api_error(403), "kube_api_forbidden", "ApiForbidden"),
            (api_error(404), "kube_api_not_found", "ApiNotFound"),
            (api_error(422), "kube_api_invalid", "ApiInvalid"),
            (api_error(503), "kube_api_server_error", "ApiError"),
            (api_error(400), "kube_api", "ApiError"),
            (
                Error::Serialization(serde_json::from_str::<u8>("x").expect_err("invalid")),
                "serialization",
                "SerializationFailed",
            ),
            (Error::NotLeader, "not_leader", "NotLeader"),
            (
                Error::MissingObjectKey("namespace"),
                "missing_object_key",
                "MissingObjectKey",
            ),
            (
                Error::from(kube::runtime::finalizer::Error::ApplyFailed(api_error(409))),
                "kube_api_conflict",
                "ApiConflict",
            ),
            (
                Error::from(kube::runtime::finalizer::Error::<Error>::UnnamedObject),
                "finalizer",
                "FinalizerFailed",
            ),
        ];
        for (error, label, reason) in cases {
            assert_eq!(error.metric_label(), label, "{error}");
            assert_eq!(error.reason(), reason, "{error}");
        }
    }

    #[test]
    fn not_leader_is_recognised_through_finalizers() {
        assert!(Error::NotLeader.is_not_leader());
        assert!(
            Error::from(kube::runtime::finalizer::Error::CleanupFailed(
                Error::NotLeader
            ))
            .is_not_leader()
        );
        assert!(!api_error(409).is_not_leader());
    }
}
