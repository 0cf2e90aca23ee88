//! The chain's types as the worker and gateway see them: plain structs that encode to and
//! decode from the runtime's types by field name, through the metadata (`scale-encode` /
//! `scale-decode`), so the worker never links the runtime.

use subxt::ext::{scale_decode::DecodeAsType, scale_encode::EncodeAsType};
use subxt::utils::{AccountId32, H256};

/// A job id.
pub type JobId = u64;
/// An adapter id.
pub type AdapterId = u32;
/// A DataNet id.
pub type DataNetId = u32;
/// An OPEN amount in plancks (10^-18 OPEN).
pub type Balance = u128;

/// The hardware a provider declares (`pallet_compute::GpuSpec`).
#[derive(Clone, Debug, PartialEq, Eq, EncodeAsType, DecodeAsType)]
#[encode_as_type(crate_path = "subxt::ext::scale_encode")]
#[decode_as_type(crate_path = "subxt::ext::scale_decode")]
pub struct GpuSpec {
    /// Marketing name of the GPU, UTF-8.
    pub model: Vec<u8>,
    /// Memory per GPU, in GiB.
    pub memory_gib: u32,
    /// GPUs behind the worker.
    pub gpu_count: u32,
    /// Measured dense bf16 TFLOP/s per GPU, if measured.
    pub bf16_tflops: Option<u32>,
}

/// Where gateways reach a worker (`pallet_compute::Endpoint`).
#[derive(Clone, Debug, PartialEq, Eq, EncodeAsType, DecodeAsType)]
#[encode_as_type(crate_path = "subxt::ext::scale_encode")]
#[decode_as_type(crate_path = "subxt::ext::scale_decode")]
pub struct Endpoint {
    /// The worker's libp2p peer id, binary form.
    pub peer_id: Vec<u8>,
    /// Its multiaddresses, binary form.
    pub multiaddrs: Vec<Vec<u8>>,
}

/// What a provider declares (`pallet_compute::ProviderTerms`).
#[derive(Clone, Debug, PartialEq, Eq, EncodeAsType, DecodeAsType)]
#[encode_as_type(crate_path = "subxt::ext::scale_encode")]
#[decode_as_type(crate_path = "subxt::ext::scale_decode")]
pub struct ProviderTerms {
    /// The hardware.
    pub spec: GpuSpec,
    /// ISO 3166 country code.
    pub region: [u8; 2],
    /// How to reach the worker.
    pub endpoint: Endpoint,
    /// The worker's ed25519 receipt-signing key.
    pub worker_key: [u8; 32],
    /// An account the worker acts from, if not the operator.
    pub worker_account: Option<AccountId32>,
    /// Base models served.
    pub base_models: Vec<u32>,
    /// Price per 1,000 tokens.
    pub price_per_1k: Balance,
    /// Most jobs at once.
    pub max_concurrent: u32,
}

/// Whether a job was acknowledged (`pallet_jobs::JobPhase`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, DecodeAsType)]
#[decode_as_type(crate_path = "subxt::ext::scale_decode")]
pub enum JobPhase {
    /// Waiting for the worker's acknowledgement.
    Assigned,
    /// Acknowledged; a receipt is due.
    Acknowledged,
}

/// An open job (`pallet_jobs::Job`).
#[derive(Clone, Debug, PartialEq, Eq, DecodeAsType)]
#[decode_as_type(crate_path = "subxt::ext::scale_decode")]
pub struct Job {
    /// Who pays.
    pub submitter: AccountId32,
    /// The provider it is assigned to.
    pub provider: AccountId32,
    /// The adapter to run.
    pub adapter: AdapterId,
    /// Hash (BLAKE2b-256) of the payload the gateway holds.
    pub input_hash: H256,
    /// Most tokens to generate.
    pub max_output_tokens: u32,
    /// Held from the submitter.
    pub escrow: Balance,
    /// Provider plus adapter price per 1,000 tokens.
    pub price_per_1k: Balance,
    /// The gateway's libp2p peer id, binary form.
    pub gateway: Vec<u8>,
    /// Assigned or acknowledged.
    pub phase: JobPhase,
    /// Block after which the job can be expired.
    pub deadline: u32,
}

/// What the `JobsApi::job_status` runtime API says of a job id.
#[derive(Clone, Debug, PartialEq, Eq, DecodeAsType)]
#[decode_as_type(crate_path = "subxt::ext::scale_decode")]
pub enum JobStatus {
    /// No job has this id yet.
    Unknown,
    /// The job is open, with its record.
    Open(Job),
    /// The job was settled, refused or expired.
    Closed,
}

/// A registered adapter (`pallet_attribution::Adapter`), the fields a client needs.
#[derive(Clone, Debug, PartialEq, Eq, DecodeAsType)]
#[decode_as_type(crate_path = "subxt::ext::scale_decode")]
pub struct Adapter {
    /// Who registered it and is paid its share.
    pub owner: AccountId32,
    /// The base model it adapts.
    pub base_model: u32,
    /// BLAKE2b-256 of its PEFT safetensors.
    pub content_hash: H256,
    /// LoRA rank.
    pub rank: u32,
    /// Price per 1,000 tokens on top of the provider's.
    pub price_per_1k: Balance,
    /// Retired adapters take no new jobs.
    pub retired: bool,
}

/// A receipt as `jobs.submit_receipts` takes it (`openledger_primitives::receipt::Receipt`).
#[derive(Clone, Debug, PartialEq, Eq, EncodeAsType)]
#[encode_as_type(crate_path = "subxt::ext::scale_encode")]
pub struct ReceiptArg {
    /// The job.
    pub job: JobId,
    /// Hash of the output.
    pub output_hash: [u8; 32],
    /// Prompt tokens.
    pub input_tokens: u32,
    /// Generated tokens.
    pub output_tokens: u32,
    /// Retrieval context: (DataNet, share in parts per million).
    pub context: Vec<(DataNetId, u32)>,
    /// BLAKE2b-256 of the answer's activation commitment (zeros: none).
    pub commitment_hash: [u8; 32],
    /// ed25519 signature over the receipt payload.
    pub signature: [u8; 64],
}

/// `jobs.JobAssigned`.
#[derive(Clone, Debug, PartialEq, Eq, DecodeAsType)]
#[decode_as_type(crate_path = "subxt::ext::scale_decode")]
pub struct JobAssigned {
    /// The new job.
    pub job: JobId,
    /// Who pays.
    pub submitter: AccountId32,
    /// The provider chosen.
    pub provider: AccountId32,
    /// The adapter.
    pub adapter: AdapterId,
    /// Payload hash.
    pub input_hash: H256,
    /// Output limit.
    pub max_output_tokens: u32,
    /// Held from the submitter.
    pub escrow: Balance,
    /// Gateway peer id.
    pub gateway: Vec<u8>,
    /// Acknowledgement deadline.
    pub deadline: u32,
}

/// `jobs.JobSettled`.
#[derive(Clone, Debug, PartialEq, Eq, DecodeAsType)]
#[decode_as_type(crate_path = "subxt::ext::scale_decode")]
pub struct JobSettled {
    /// The job.
    pub job: JobId,
    /// Its provider.
    pub provider: AccountId32,
    /// Output hash from the receipt.
    pub output_hash: H256,
    /// Prompt tokens.
    pub input_tokens: u32,
    /// Generated tokens.
    pub output_tokens: u32,
    /// Paid on through the fee split.
    pub charged: Balance,
    /// Returned to the submitter.
    pub refunded: Balance,
    /// The receipt's activation commitment hash (zeros: none).
    pub commitment_hash: H256,
}

/// `jobs.ReceiptRejected`: only the job; the error is read from the metadata when shown.
#[derive(Clone, Debug, PartialEq, Eq, DecodeAsType)]
#[decode_as_type(crate_path = "subxt::ext::scale_decode")]
pub struct ReceiptRejected {
    /// The job whose receipt was refused.
    pub job: JobId,
}

/// `jobs.JobExpired`.
#[derive(Clone, Debug, PartialEq, Eq, DecodeAsType)]
#[decode_as_type(crate_path = "subxt::ext::scale_decode")]
pub struct JobExpired {
    /// The job.
    pub job: JobId,
    /// Its provider, slashed.
    pub provider: AccountId32,
    /// Escrow returned to the user.
    pub refunded: Balance,
    /// Taken from the provider's bond and given to the user.
    pub slashed: Balance,
}

/// Why a worker refuses a job (`pallet_jobs::RefusalReason`), as the chain records it and the
/// gateway reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, DecodeAsType)]
#[decode_as_type(crate_path = "subxt::ext::scale_decode")]
pub enum RefusalReason {
    /// The gateway never delivered the payload (or denied it to this worker).
    PayloadUnavailable,
    /// The payload's hash differs from the job's `input_hash`.
    PayloadMismatch,
    /// The payload is not a job payload.
    MalformedPayload,
    /// The payload is larger than the worker accepts.
    PayloadTooLarge,
    /// The prompt has no tokens.
    EmptyPrompt,
    /// The prompt plus the requested tokens do not fit the model's context.
    PromptTooLong,
    /// A sampling parameter is out of range, or more tokens are asked than the job allows.
    InvalidParameters,
    /// The worker does not serve the job's adapter.
    AdapterNotServed,
    /// The worker could not load the job's adapter.
    AdapterUnavailable,
    /// The worker failed while running the job.
    WorkerFault,
}

impl RefusalReason {
    /// Every reason, in the chain's order.
    pub const ALL: [RefusalReason; 10] = [
        Self::PayloadUnavailable,
        Self::PayloadMismatch,
        Self::MalformedPayload,
        Self::PayloadTooLarge,
        Self::EmptyPrompt,
        Self::PromptTooLong,
        Self::InvalidParameters,
        Self::AdapterNotServed,
        Self::AdapterUnavailable,
        Self::WorkerFault,
    ];

    /// The variant's name in the runtime metadata.
    pub fn variant(self) -> &'static str {
        match self {
            Self::PayloadUnavailable => "PayloadUnavailable",
            Self::PayloadMismatch => "PayloadMismatch",
            Self::MalformedPayload => "MalformedPayload",
            Self::PayloadTooLarge => "PayloadTooLarge",
            Self::EmptyPrompt => "EmptyPrompt",
            Self::PromptTooLong => "PromptTooLong",
            Self::InvalidParameters => "InvalidParameters",
            Self::AdapterNotServed => "AdapterNotServed",
            Self::AdapterUnavailable => "AdapterUnavailable",
            Self::WorkerFault => "WorkerFault",
        }
    }

    /// The snake-case code a user sees in the gateway's error (`prompt_too_long`).
    pub fn code(self) -> &'static str {
        match self {
            Self::PayloadUnavailable => "payload_unavailable",
            Self::PayloadMismatch => "payload_mismatch",
            Self::MalformedPayload => "malformed_payload",
            Self::PayloadTooLarge => "payload_too_large",
            Self::EmptyPrompt => "empty_prompt",
            Self::PromptTooLong => "prompt_too_long",
            Self::InvalidParameters => "invalid_parameters",
            Self::AdapterNotServed => "adapter_not_served",
            Self::AdapterUnavailable => "adapter_unavailable",
            Self::WorkerFault => "worker_fault",
        }
    }

    /// The reason whose [`Self::code`] is `code`.
    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.code() == code)
    }

    /// Whether the request (not the worker) was at fault.
    pub fn is_request_fault(self) -> bool {
        !matches!(self, Self::WorkerFault | Self::AdapterUnavailable | Self::AdapterNotServed)
    }
}

/// `jobs.JobRefused`.
#[derive(Clone, Debug, PartialEq, Eq, DecodeAsType)]
#[decode_as_type(crate_path = "subxt::ext::scale_decode")]
pub struct JobRefused {
    /// The job.
    pub job: JobId,
    /// Its provider.
    pub provider: AccountId32,
    /// Why.
    pub reason: RefusalReason,
    /// Escrow returned to the user (all of it).
    pub refunded: Balance,
}

/// A fee quote (`pallet_jobs::Quote`): who would take a job now and the least `max_fee`.
#[derive(Clone, Debug, PartialEq, Eq, DecodeAsType)]
#[decode_as_type(crate_path = "subxt::ext::scale_decode")]
pub struct Quote {
    /// The provider matching would pick.
    pub provider: AccountId32,
    /// Provider plus adapter price per 1,000 tokens.
    pub price_per_1k: Balance,
    /// The charge for `max_output_tokens` output tokens alone.
    pub min_max_fee: Balance,
}

#[cfg(test)]
mod tests {
    use super::RefusalReason;

    #[test]
    fn refusal_codes_round_trip_and_are_distinct() {
        let mut codes = std::collections::BTreeSet::new();
        for reason in RefusalReason::ALL {
            assert_eq!(RefusalReason::from_code(reason.code()), Some(reason));
            assert!(codes.insert(reason.code()), "{} twice", reason.code());
        }
        assert_eq!(RefusalReason::from_code("no_such_reason"), None);
        assert!(RefusalReason::PromptTooLong.is_request_fault());
        assert!(!RefusalReason::WorkerFault.is_request_fault());
    }
}
