//! Inference over real libp2p streams: a server and nodes on loopback holding real (tiny)
//! llama shards; generations through the server's and a node's pipeline client equal the
//! shards chained in one process, and a killed holder is routed around.

use std::time::Duration;

use anyhow::Result;
use shardswarm_model::{Device, GenerateOptions, Generator, SamplerConfig};
use shardswarm_node::{Event, Handle, ShardPolicy, Started};
use shardswarm_pipeline::{GenParams, Outcome, Sampling};
use shardswarm_testkit::{node_config, start_server, wait_for, write_random_shards};
use tokio::sync::mpsc;

const LIMIT: Duration = Duration::from_secs(60);

async fn generate(handle: &Handle, p: &GenParams) -> Result<(Vec<u32>, Outcome)> {
    let (tx, mut rx) = mpsc::channel(64);
    let client = handle.inference().client.clone();
    let p = p.clone();
    let task = tokio::spawn(async move { client.generate(&p, tx).await });
    let mut got = Vec::new();
    while let Some(t) = tokio::time::timeout(LIMIT, rx.recv()).await? {
        got.push(t);
    }
    Ok((got, task.await??))
}

async fn node(
    tmp: &std::path::Path,
    name: &str,
    addrs: &[libp2p::Multiaddr],
    shards: Vec<u32>,
) -> Result<Started> {
    let cfg = node_config(tmp.join(name), addrs.to_vec(), ShardPolicy::Pinned(shards));
    Ok(shardswarm_node::start_node(cfg).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generations_over_the_swarm_equal_the_chained_shards_and_survive_a_kill() -> Result<()> {
    shardswarm_testkit::init_tracing();
    let tmp = tempfile::tempdir()?;
    let shards = tmp.path().join("shards");
    write_random_shards(&shards, 4, 60_000, 5)?;
    let reference = Generator::load_shards_dir(&shards, &Device::Cpu)?;
    let (mut server, addrs) = start_server(tmp.path().join("server"), shards.clone()).await?;
    let a = node(tmp.path(), "a", &addrs, vec![0, 1]).await?;
    let b = node(tmp.path(), "b", &addrs, vec![2]).await?;
    let b2 = node(tmp.path(), "b2", &addrs, vec![2]).await?;
    let _c = node(tmp.path(), "c", &addrs, vec![3]).await?;
    wait_for(&mut server.events, LIMIT, |e| {
        matches!(e, Event::SwarmReady { ready: true }).then_some(())
    })
    .await?;

    let prompt = vec![1u32, 40, 41, 42, 43];
    let opts = GenerateOptions {
        max_tokens: 24,
        sampler: SamplerConfig::greedy(),
        ignore_eos: true,
    };
    let want = reference.generate_ids(&prompt, &opts, |_| true)?.tokens;
    let p = GenParams {
        prompt,
        max_tokens: 24,
        sampling: Sampling::greedy(),
        seed: 0,
        stop_ids: Vec::new(),
        context: reference.context_length(),
    };
    let (got, outcome) = generate(&server.handle, &p).await?;
    assert_eq!(got, want, "through the server's gateway");
    assert_eq!(outcome.route.len(), 3, "{:?}", outcome.route);
    // A node's gateway learns the holders from the server and may run its own shards in-process.
    let (got, _) = generate(&a.handle, &p).await?;
    assert_eq!(got, want, "through a node's gateway");

    // The replica of shard 2 in use goes away: the next generation routes around it.
    let used = outcome.route[1].peer.clone();
    let victim = if used == b.handle.peer_id().to_string() {
        &b
    } else {
        &b2
    };
    victim.handle.shutdown().await;
    let (got, outcome) = generate(&server.handle, &p).await?;
    assert_eq!(got, want, "after the holder left");
    assert!(
        outcome.route.iter().all(|h| h.peer != used),
        "{:?}",
        outcome.route
    );
    Ok(())
}
