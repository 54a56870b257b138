//! [`NetworkKeys`]: the cloud's signed list of the machines of one network and their public keys,
//! which a connector checks every hub batch against before it takes custody of it; and
//! [`PollManyAnswer`], the commands due for the hubs a connector long-polls for.

use super::document::SignedKind;
use super::machine::MachineId;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// `POST /v1/network-keys` answer (inside a [`super::Signed`] by the cloud key): who may send
/// batches through the asking connector, and the cloud's ingest limits, so the connector refuses
/// at once what the cloud would refuse and sizes its forwards below what the cloud takes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkKeys {
    /// The connector it was made for: a list for another connector (another network) is refused,
    /// so one cannot be replayed to this one.
    pub connector: MachineId,
    pub network_id: String,
    /// The version: a connector never replaces its list with one issued earlier, so an old list
    /// (one with a key since revoked) cannot be played back to it.
    pub issued_at: DateTime<Utc>,
    pub machines: Vec<NetworkMachine>,
    pub limits: IngestLimits,
}

/// One enrolled machine of the network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkMachine {
    pub machine_id: MachineId,
    /// SPKI PEM.
    pub public_key: String,
}

/// The cloud's limits on what it takes in one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestLimits {
    /// Largest request body on the wire (compressed), bytes.
    pub max_body: u64,
    /// Largest body once decompressed, bytes.
    pub max_decompressed: u64,
    /// Most readings in one hub batch.
    pub max_readings: u64,
}

impl SignedKind for NetworkKeys {
    const KIND: &'static str = "network-keys";
}

/// The cloud's answer to a connector's `POST /v1/commands/poll-many`: the signed envelopes due for
/// each hub it asked for (only hubs with something due appear), and the hubs it may not poll for
/// (not enrolled, revoked, or in another network).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PollManyAnswer {
    #[serde(default)]
    pub commands: std::collections::BTreeMap<String, Vec<super::Signed<super::CommandEnvelope>>>,
    #[serde(default)]
    pub refused: Vec<String>,
}
