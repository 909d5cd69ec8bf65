//! Building the status documents from what a peer knows. Pure.

use shardswarm_proto::{FileEntry, NodeStatus, ShardStatus, SwarmStatus};

/// The swarm status over `files`, given the statuses of the live peers in `nodes`.
pub fn swarm_status(
    model: &str,
    model_id: &str,
    files: &[FileEntry],
    nodes: Vec<NodeStatus>,
) -> SwarmStatus {
    let shards: Vec<ShardStatus> = files
        .iter()
        .map(|f| ShardStatus {
            index: f.shard_index,
            filename: f.filename.clone(),
            info_hash: f.info_hash,
            size: f.size,
            layers: f.layers,
            loaded_by: nodes
                .iter()
                .filter(|n| n.loaded.contains(&f.shard_index))
                .map(|n| n.peer_id.clone())
                .collect(),
        })
        .collect();
    let missing: Vec<u32> = shards
        .iter()
        .filter(|s| s.loaded_by.is_empty())
        .map(|s| s.index)
        .collect();
    SwarmStatus {
        swarm_ready: !shards.is_empty() && missing.is_empty(),
        total_shards: files.len() as u32,
        model: model.to_owned(),
        model_id: model_id.to_owned(),
        missing,
        shards,
        nodes,
    }
}

#[cfg(test)]
mod tests {
    use shardswarm_proto::InfoHash;

    use super::*;

    fn file(i: u32) -> FileEntry {
        FileEntry {
            info_hash: InfoHash([i as u8; 20]),
            filename: format!("shard-{i}.gguf"),
            size: 10,
            shard_index: i,
            layers: [i, i + 1],
        }
    }

    fn node(id: &str, loaded: Vec<u32>) -> NodeStatus {
        NodeStatus {
            peer_id: id.into(),
            loaded,
            ..Default::default()
        }
    }

    #[test]
    fn ready_only_when_every_shard_is_loaded_somewhere() {
        let files: Vec<_> = (0..3).map(file).collect();
        let s = swarm_status(
            "m",
            "id",
            &files,
            vec![node("a", vec![0]), node("b", vec![2])],
        );
        assert!(!s.swarm_ready);
        assert_eq!(s.missing, vec![1]);
        let s = swarm_status(
            "m",
            "id",
            &files,
            vec![node("a", vec![0, 1]), node("b", vec![2, 1])],
        );
        assert!(s.swarm_ready);
        assert_eq!(s.shards[1].loaded_by, vec!["a".to_owned(), "b".to_owned()]);
        assert!(!swarm_status("m", "id", &[], vec![]).swarm_ready);
    }
}
