//! The user-facing log lines of the seed document (`[TORRENT_SYNC] …`, `[MSG] …`, `[SWARM] …`),
//! kept word for word. They go through `tracing` like everything else.

use libp2p::PeerId;
use libp2p::request_response::OutboundRequestId;
use serde_json::Value;
use shardswarm_proto::RawRequest;
use tracing::info;

/// Tracing target of the seed's torrent-sync lines.
pub(crate) const SYNC: &str = "shardswarm::torrent_sync";
/// Tracing target of the `[MSG]` blocks.
pub(crate) const MSG: &str = "shardswarm::msg";
/// Tracing target of the `[SWARM]` lines.
pub(crate) const SWARM: &str = "shardswarm::swarm";

/// The envelope as the seed prints it: one `"key":value` per line, in envelope order.
pub fn seed_json(raw: &RawRequest) -> String {
    let compact = |v: Value| serde_json::to_string(&v).unwrap_or_default();
    let fields = [
        ("command", compact(Value::from(raw.command.as_str()))),
        ("request_id", compact(Value::from(raw.request_id.as_str()))),
        ("from", compact(Value::from(raw.from.as_str()))),
        ("to", compact(Value::from(raw.to.as_str()))),
        ("timestamp", raw.timestamp.to_string()),
        ("params", compact(raw.params.clone())),
    ];
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("  \"{k}\":{v}"))
        .collect();
    format!("{{\n{}\n}}", body.join(",\n"))
}

/// The `[MSG] 📤 SENT MESSAGE TO PEER` block.
pub(crate) fn sent(peer: &PeerId, id: OutboundRequestId, raw: &RawRequest) {
    info!(target: MSG, "[MSG] 📤 SENT MESSAGE TO PEER: {peer}");
    info!(target: MSG, "[MSG]   Command: {}", raw.command);
    info!(target: MSG, "[MSG]   Request ID: {id:?}");
    info!(target: MSG, "[MSG]   Message: {}", seed_json(raw));
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn seed_json_matches_the_seed_layout() {
        let raw = RawRequest {
            command: "SYNC_TORRENTS".into(),
            request_id: "req-1769057962082929400".into(),
            from: "A".into(),
            to: "B".into(),
            timestamp: 1769057962,
            params: json!({"total_shards": 8}),
        };
        assert_eq!(
            seed_json(&raw),
            "{\n  \"command\":\"SYNC_TORRENTS\",\n  \"request_id\":\"req-1769057962082929400\",\n  \
             \"from\":\"A\",\n  \"to\":\"B\",\n  \"timestamp\":1769057962,\n  \
             \"params\":{\"total_shards\":8}\n}"
        );
    }
}
