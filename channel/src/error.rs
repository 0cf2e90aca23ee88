//! What can go wrong with a receipt, a voucher or the store, each named.

/// Why a receipt or voucher was refused, or the store failed. Nothing is changed when one
/// is returned: the channel's state is as before the call.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("{0}: bad signature")]
    BadSignature(&'static str),
    #[error("receipt for channel {got}, expected channel {expected}")]
    WrongChannel { expected: u64, got: u64 },
    #[error("malformed receipt: {0}")]
    BadReceipt(String),
    #[error("request {0} was already vouched for on this channel")]
    Duplicate(u64),
    #[error("receipt charges {charge} planck, more than the {max} agreed for the request")]
    Overcharge { charge: u128, max: u128 },
    #[error("channel {channel}: {needed} planck owed would exceed its deposit of {deposit}")]
    InsufficientDeposit { channel: u64, needed: u128, deposit: u128 },
    #[error("channel {channel}: a voucher holds at most {max} {what}; redeem before serving more")]
    BreakdownFull { channel: u64, what: &'static str, max: usize },
    #[error("channel {channel}: {outstanding} planck unvouched would exceed the credit limit of {limit}")]
    CreditLimit { channel: u64, outstanding: u128, limit: u128 },
    #[error("voucher {got} is not newer than voucher {latest}")]
    StaleVoucher { latest: u64, got: u64 },
    #[error("voucher's cumulative {got} is below the {floor} already vouched or redeemed")]
    CumulativeDecreased { floor: u128, got: u128 },
    #[error("voucher pays {paid} planck for request {request}, which charged {charge}")]
    Underpaid { request: u64, paid: u128, charge: u128 },
    #[error("voucher breakdown sums to {sum}, but its increment over the redeemed amount is {increment}")]
    BadBreakdown { sum: u128, increment: u128 },
    #[error("no request {0} is waiting for a voucher")]
    UnknownRequest(u64),
    #[error("channel store: {0}")]
    Store(String),
}

macro_rules! store_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for ChannelError {
            fn from(e: $t) -> Self {
                ChannelError::Store(e.to_string())
            }
        }
    )*};
}
store_errors!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    codec::Error
);
