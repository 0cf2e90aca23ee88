//! The runtime's errors as types: a failed call's `DispatchError` decoded against the node's
//! metadata into [`RuntimeError`], so callers match variants, never message text.
//!
//! The three marketplace pallets' errors are listed here by name, in the order the pallets
//! declare them; the metadata resolves a module error's pallet and variant names, which are
//! then looked up in these lists. An error this client does not know (another pallet's, or one
//! added to a pallet after this client was built) stays [`RuntimeError::Module`] with both
//! names, and the chain client's tests check that every error of the three pallets in a live
//! node's metadata has its variant here.

use subxt::error::{DispatchError, TokenError};

macro_rules! pallet_errors {
    ($(#[$meta:meta])* $name:ident, $pallet:literal { $($variant:ident),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[allow(missing_docs)]
        pub enum $name {
            $($variant),*
        }

        impl $name {
            /// The pallet's name in the runtime.
            pub const PALLET: &'static str = $pallet;

            /// Every variant's name, as the metadata spells it.
            pub const NAMES: &'static [&'static str] = &[$(stringify!($variant)),*];

            /// The variant the metadata calls `name`.
            pub fn from_name(name: &str) -> Option<Self> {
                match name {
                    $(stringify!($variant) => Some(Self::$variant),)*
                    _ => None,
                }
            }

            /// The variant's name, as the metadata spells it.
            pub fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => stringify!($variant),)*
                }
            }
        }
    };
}

pallet_errors!(
    /// `pallet-compute`'s errors (see its `Error` enum for when each happens).
    ComputeError, "Compute" {
        AlreadyRegistered, NotRegistered, ProviderLeaving, NotLeaving, StillUnbonding, JobsOpen,
        BondTooLow, NoBaseModels, DuplicateBaseModel, ZeroConcurrency, WeakWorkerKey,
        TooManyProviders, NotAuthorised, ZeroAmount,
    }
);

pallet_errors!(
    /// `pallet-jobs`'s errors (see its `Error` enum for when each happens).
    JobsError, "Jobs" {
        UnknownAdapter, ZeroOutputTokens, NoProviderAvailable, UnknownJob, JobClosed,
        NotAssignedWorker, AlreadyAcknowledged, DeadlinePassed, NotExpired, BadSignature,
        MalformedSignature, OutputTooLong, UnknownProvider, GatewayTooLong,
    }
);

pallet_errors!(
    /// `pallet-attribution`'s errors (see its `Error` enum for when each happens).
    AttributionError, "Attribution" {
        UnknownDataNet, NotDataNetOwner, NotCurator, AlreadyCurator, NotACurator,
        TooManyCurators, BadWeight, DuplicateRecord, UnknownRecord, NotPending,
        NotContributorOrCurator, NothingToClaim, UnknownAdapter, NotAdapterOwner,
        AdapterRetired, BadRank, BadTargetModules, BadTrainingShares, BadSplit,
        BadContextShares,
    }
);

pallet_errors!(
    /// `pallet-verification`'s errors (see its `Error` enum for when each happens).
    VerificationError, "Verification" {
        UnknownAudit, NotAssignedVerifier, NotAwaitingVerdicts, NotTheProvider, NotContestable,
        NoVerifierAvailable, NoRevealPending, BadProof, BadReceipt,
    }
);

/// Why the runtime refused a call.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeError {
    /// `pallet-compute` refused it.
    #[error("Compute.{}", .0.name())]
    Compute(ComputeError),
    /// `pallet-jobs` refused it.
    #[error("Jobs.{}", .0.name())]
    Jobs(JobsError),
    /// `pallet-attribution` refused it.
    #[error("Attribution.{}", .0.name())]
    Attribution(AttributionError),
    /// `pallet-verification` refused it.
    #[error("Verification.{}", .0.name())]
    Verification(VerificationError),
    /// The account could not pay or hold the amount (a token error, or balances'
    /// `InsufficientBalance`).
    #[error("insufficient funds ({0})")]
    InsufficientFunds(String),
    /// Another pallet's error, or one this client does not know, named from the metadata.
    #[error("{pallet}.{error}")]
    Module {
        /// The pallet's name.
        pallet: String,
        /// The error variant's name.
        error: String,
    },
    /// A dispatch error that is not a pallet's (`BadOrigin`, an arithmetic error, ...).
    #[error("{0}")]
    Other(String),
}

impl RuntimeError {
    /// The error of a module named `pallet` whose variant is `error`, typed where known.
    pub fn of_module(pallet: &str, error: &str) -> Self {
        let typed = match pallet {
            ComputeError::PALLET => ComputeError::from_name(error).map(Self::Compute),
            JobsError::PALLET => JobsError::from_name(error).map(Self::Jobs),
            AttributionError::PALLET => AttributionError::from_name(error).map(Self::Attribution),
            VerificationError::PALLET => {
                VerificationError::from_name(error).map(Self::Verification)
            },
            "Balances" if error == "InsufficientBalance" => {
                Some(Self::InsufficientFunds(format!("{pallet}.{error}")))
            },
            _ => None,
        };
        typed.unwrap_or_else(|| Self::Module { pallet: pallet.into(), error: error.into() })
    }

    /// Whether this is `pallet-jobs`'s `error`.
    pub fn is_jobs(&self, error: JobsError) -> bool {
        *self == Self::Jobs(error)
    }
}

impl From<&DispatchError> for RuntimeError {
    fn from(error: &DispatchError) -> Self {
        match error {
            DispatchError::Module(module) => match module.details() {
                Ok(details) => Self::of_module(details.pallet.name(), &details.variant.name),
                Err(_) => Self::Other(module.to_string()),
            },
            DispatchError::Token(
                token @ (TokenError::FundsUnavailable | TokenError::BelowMinimum),
            ) => Self::InsufficientFunds(format!("{token:?}")),
            other => Self::Other(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_variants_and_back() {
        for &name in JobsError::NAMES {
            assert_eq!(JobsError::from_name(name).map(JobsError::name), Some(name));
        }
        assert_eq!(
            RuntimeError::of_module("Jobs", "NoProviderAvailable"),
            RuntimeError::Jobs(JobsError::NoProviderAvailable)
        );
        assert_eq!(
            RuntimeError::of_module("Attribution", "UnknownAdapter"),
            RuntimeError::Attribution(AttributionError::UnknownAdapter)
        );
        assert_eq!(
            RuntimeError::of_module("Jobs", "SomethingNew"),
            RuntimeError::Module { pallet: "Jobs".into(), error: "SomethingNew".into() }
        );
        assert_eq!(
            RuntimeError::of_module("Jobs", "NoProviderAvailable").to_string(),
            "Jobs.NoProviderAvailable"
        );
    }
}
