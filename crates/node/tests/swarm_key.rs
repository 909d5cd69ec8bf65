//! Issue 9, the private swarm (`--swarm-key`): a keyed server and a keyed node work as ever
//! (sync, pieces, readiness), and a peer without the key — none at all, or a different one — is
//! refused at every surface of the server and of a node: the connection itself, the catalog
//! (SYNC_TORRENTS), every other command, the piece protocol, the DHT (lookups and its own
//! provider records) and inference. Each surface is tried by a raw libp2p probe that succeeds
//! with the right key (so each refusal could have been a success), and each refusal is checked
//! on the refusing side's log too. Real shardswarm nodes without the key never sync, and a keyed
//! node refuses outsiders it dials itself.

mod swarm_key_support;

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use libp2p::{Multiaddr, PeerId};
use shardswarm_node::{Event, ShardPolicy, Started, SwarmKey};
use shardswarm_proto::{Manifest, Status};
use shardswarm_testkit::{node_config, server_config, wait_for, wait_loaded, write_random_shards};
use swarm_key_support::{AuthLog, Dialed, Probe, auth_event, auth_log, refusal_of};
use tokio::sync::broadcast;

const LIMIT: Duration = Duration::from_secs(30);

fn key(b: u8) -> SwarmKey {
    SwarmKey::from_bytes([b; 32])
}

/// A keyed server with two shards and a keyed node holding both, swarm ready.
struct Keyed {
    _tmp: tempfile::TempDir,
    manifest: Manifest,
    server: Started,
    server_addrs: Vec<Multiaddr>,
    node: Started,
    node_addrs: Vec<Multiaddr>,
}

impl Keyed {
    async fn start(seed: u64) -> Result<Keyed> {
        let tmp = tempfile::tempdir()?;
        let manifest = write_random_shards(&tmp.path().join("shards"), 2, 30_000, seed)?;
        let mut cfg = server_config(tmp.path().join("server"), tmp.path().join("shards"));
        cfg.common.swarm_key = Some(key(1));
        let mut server = shardswarm_node::start_server(cfg).await?;
        let server_addrs = server.handle.listen_addrs().await?;
        let mut cfg = node_config(
            tmp.path().join("node"),
            server_addrs.clone(),
            ShardPolicy::All,
        );
        cfg.common.swarm_key = Some(key(1));
        let mut node = shardswarm_node::start_node(cfg).await?;
        let node_addrs = node.handle.listen_addrs().await?;
        // The keyed node syncs, downloads both shards piece by piece from the server, loads them.
        wait_for(&mut node.events, LIMIT, |e| {
            matches!(e, Event::CatalogReceived { .. }).then_some(())
        })
        .await
        .context("the keyed node got no catalog")?;
        wait_loaded(&mut node.events, 2, LIMIT).await?;
        wait_for(&mut server.events, LIMIT, |e| {
            matches!(e, Event::SwarmReady { ready: true }).then_some(())
        })
        .await
        .context("the keyed swarm did not get ready")?;
        let down = node.handle.metrics().downloaded_from("server");
        ensure!(
            down >= manifest.shards.iter().map(|s| s.size).sum::<u64>(),
            "the node downloaded only {down} bytes from the server"
        );
        Ok(Keyed {
            _tmp: tmp,
            manifest,
            server,
            server_addrs,
            node,
            node_addrs,
        })
    }

    async fn stop(self) {
        self.node.handle.shutdown().await;
        self.server.handle.shutdown().await;
    }
}

/// What a probe got from each surface of one target.
#[derive(Debug)]
struct Surfaces {
    /// Per address (QUIC, TCP): how the plain dial went.
    dials: Vec<Dialed>,
    /// Per command: the answer's status, or why there was none.
    commands: Vec<(&'static str, Result<Status, String>)>,
    /// SYNC_TORRENTS: the number of files in the catalog.
    catalog_files: Result<usize, String>,
    /// The piece protocol: bytes of the first block.
    piece: Result<usize, String>,
    /// Inference: the first frame back (debug text).
    infer: Result<String, String>,
    /// Providers of shard 0's info-hash found through this target.
    providers: Vec<PeerId>,
}

const COMMANDS: [&str; 4] = [
    "SYNC_TORRENTS",
    "LIST_FILES",
    "GET_NODE_STATUS",
    "SWARM_STATUS",
];

/// Tries every surface of `target` (at `addrs`) from `probe`.
async fn try_all(
    probe: &mut Probe,
    target: PeerId,
    addrs: &[Multiaddr],
    manifest: &Manifest,
) -> Result<Surfaces> {
    let mut dials = Vec::new();
    for a in addrs {
        dials.push(probe.dial(target, a).await?);
    }
    probe.learn(target, addrs);
    let mut commands = Vec::new();
    for c in COMMANDS {
        let r = probe.command(target, c).await.map(|r| r.status);
        commands.push((c, r));
    }
    let catalog_files = probe.command(target, "SYNC_TORRENTS").await.and_then(|r| {
        r.body
            .get("files")
            .and_then(|f| f.as_array())
            .map(Vec::len)
            .ok_or_else(|| format!("no files in {:?}", r.body))
    });
    let s0 = &manifest.shards[0];
    let length = 16_384u32.min(s0.piece_length as u32).min(s0.size as u32);
    let piece = probe
        .piece(target, s0.info_hash, length)
        .await
        .map(|(_, n)| n);
    let infer = probe
        .infer(target, manifest.total_shards)
        .await
        .map(|f| format!("{f:?}"));
    let providers = probe.providers(s0.info_hash.as_bytes()).await?;
    Ok(Surfaces {
        dials,
        commands,
        catalog_files,
        piece,
        infer,
        providers,
    })
}

fn assert_served(s: &Surfaces, node: PeerId, who: &str) -> Result<()> {
    ensure!(
        s.dials.len() == 2 && s.dials.iter().all(|d| *d == Dialed::Up),
        "{who}: dials {:?}",
        s.dials
    );
    for (c, r) in &s.commands {
        ensure!(matches!(r, Ok(Status::Success)), "{who}: {c} → {r:?}");
    }
    ensure!(
        s.catalog_files == Ok(2),
        "{who}: catalog {:?}",
        s.catalog_files
    );
    ensure!(
        matches!(s.piece, Ok(n) if n > 0),
        "{who}: piece {:?}",
        s.piece
    );
    ensure!(s.infer.is_ok(), "{who}: inference {:?}", s.infer);
    ensure!(
        s.providers.contains(&node),
        "{who}: providers {:?}",
        s.providers
    );
    Ok(())
}

fn assert_refused(s: &Surfaces, who: &str) -> Result<()> {
    ensure!(
        s.dials.len() == 2 && !s.dials.contains(&Dialed::Up),
        "{who}: a dial got through: {:?}",
        s.dials
    );
    for (c, r) in &s.commands {
        ensure!(r.is_err(), "{who}: {c} was answered: {r:?}");
    }
    ensure!(s.catalog_files.is_err(), "{who}: got a catalog");
    ensure!(s.piece.is_err(), "{who}: got a piece: {:?}", s.piece);
    ensure!(s.infer.is_err(), "{who}: inference answered: {:?}", s.infer);
    ensure!(
        s.providers.is_empty(),
        "{who}: found providers {:?}",
        s.providers
    );
    Ok(())
}

/// Waits for the refusal of `peer` and checks its reason.
async fn refused_for(
    log: &mut broadcast::Receiver<AuthLog>,
    peer: PeerId,
    reason: &str,
) -> Result<()> {
    let ev = refusal_of(log, peer, Some(reason), LIMIT).await?;
    ensure!(
        ev.message == "connection refused: swarm key mismatch",
        "{ev:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outsiders_are_refused_at_every_surface_of_the_server_and_of_a_node() -> Result<()> {
    let mut log = auth_log();
    let k = Keyed::start(91).await?;
    let server = k.server.handle.peer_id();
    let node = k.node.handle.peer_id();
    let targets = [
        ("server", server, k.server_addrs.clone()),
        ("node", node, k.node_addrs.clone()),
    ];

    // With the right key, every surface of both answers: the probe is able to see a success.
    let mut insider = Probe::new(Some(key(1))).await?;
    for (name, id, addrs) in &targets {
        let s = try_all(&mut insider, *id, addrs, &k.manifest).await?;
        assert_served(&s, node, &format!("insider → {name}"))?;
    }

    for (label, probe_key, reason) in [
        ("keyless", None, "no_key"),
        ("wrong key", Some(key(2)), "wrong_key"),
    ] {
        for (name, id, addrs) in &targets {
            // A fresh outsider per target, so each refusal is this target's own.
            let mut outsider = Probe::new(probe_key.clone()).await?;
            let s = try_all(&mut outsider, *id, addrs, &k.manifest).await?;
            assert_refused(&s, &format!("{label} → {name}"))?;
            // The target itself refused it (not only the outsider's own check).
            refused_for(&mut log, outsider.id, reason)
                .await
                .with_context(|| format!("{label} → {name}"))?;
            ensure!(
                !k.server
                    .handle
                    .peers()
                    .await?
                    .iter()
                    .any(|p| p.peer_id == outsider.id.to_string())
                    && !k
                        .node
                        .handle
                        .peers()
                        .await?
                        .iter()
                        .any(|p| p.peer_id == outsider.id.to_string()),
                "{label}: a keyed peer lists the outsider as connected"
            );
            ensure!(
                !outsider.connected(id),
                "{label}: still connected to {name}"
            );
        }
    }
    k.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outsiders_provider_record_never_reaches_the_keyed_dht() -> Result<()> {
    let mut log = auth_log();
    let k = Keyed::start(92).await?;
    let server = k.server.handle.peer_id();
    let outsider_key = b"a record only outsiders know".to_vec();
    let insider_key = b"a record insiders share".to_vec();

    for probe_key in [None, Some(key(2))] {
        let mut outsider = Probe::new(probe_key).await?;
        outsider.learn(server, &k.server_addrs);
        // The announcement finds nobody to store it at.
        let answered = outsider.provide(&outsider_key).await?;
        ensure!(
            answered == 0,
            "{answered} peers answered the outsider's announcement"
        );
        refusal_of(&mut log, outsider.id, None, LIMIT).await?;
    }

    // An insider's announcement does reach the swarm: another insider finds it through the
    // server (a few lookups: the record lands on the server while the first one may run).
    let mut announcer = Probe::new(Some(key(1))).await?;
    announcer.learn(server, &k.server_addrs);
    ensure!(
        announcer.provide(&insider_key).await? > 0,
        "nobody answered the insider's announcement"
    );
    let mut seeker = Probe::new(Some(key(1))).await?;
    seeker.learn(server, &k.server_addrs);
    let announcer_id = announcer.id;
    // The announcer's swarm keeps running meanwhile: its ADD_PROVIDER requests go out after
    // the query reported done.
    let (found, outsiders_found) = announcer
        .drive(async {
            let mut found = Vec::new();
            for _ in 0..5 {
                found = seeker.providers(&insider_key).await?;
                if found.contains(&announcer_id) {
                    break;
                }
            }
            // The same lookup for the outsiders' key, through the same peers.
            let outsiders_found = seeker.providers(&outsider_key).await?;
            anyhow::Ok((found, outsiders_found))
        })
        .await??;
    ensure!(
        found.contains(&announcer_id),
        "the insider's record was not found: {found:?}"
    );
    // The outsiders' record is nowhere in the keyed DHT.
    ensure!(
        outsiders_found.is_empty(),
        "outsider record found: {outsiders_found:?}"
    );
    k.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_without_the_key_never_sync_and_a_keyed_node_refuses_to_dial_outsiders() -> Result<()>
{
    let mut log = auth_log();
    let k = Keyed::start(93).await?;
    let tmp = tempfile::tempdir()?;

    // Real nodes joining the keyed server: one without a key, one with another key. Each is
    // refused, then refused again when it redials; in between nothing got through.
    for (label, node_key, reason) in [
        ("keyless", None, "no_key"),
        ("wrong key", Some(key(3)), "wrong_key"),
    ] {
        let mut cfg = node_config(
            tmp.path().join(label.replace(' ', "-")),
            k.server_addrs.clone(),
            ShardPolicy::All,
        );
        cfg.common.swarm_key = node_key.clone();
        let mut outsider = shardswarm_node::start_node(cfg).await?;
        let id = outsider.handle.peer_id();
        refused_for(&mut log, id, reason).await.context(label)?;
        if node_key.is_none() {
            // The keyless node cannot tell a refusal from a drop, but says what it may be.
            let server = k.server.handle.peer_id();
            auth_event(&mut log, server, "--swarm-key", None, LIMIT)
                .await
                .context("the keyless node's hint")?;
        }
        refused_for(&mut log, id, reason)
            .await
            .with_context(|| format!("{label}: refused again"))?;
        while let Ok(ev) = outsider.events.try_recv() {
            ensure!(
                !matches!(
                    ev,
                    Event::CatalogReceived { .. }
                        | Event::SyncDecision { .. }
                        | Event::ShardVerified { .. }
                        | Event::ShardLoaded { .. }
                ),
                "{label} node: {ev:?}"
            );
        }
        let st = outsider.handle.node_status().await?;
        ensure!(
            st.verified.is_empty() && st.downloading.is_empty(),
            "{label}: {st:?}"
        );
        ensure!(
            outsider.handle.swarm_status().await?.total_shards == 0,
            "{label} has a catalog"
        );
        let seen = k.server.handle.swarm_status().await?;
        ensure!(
            !seen.nodes.iter().any(|n| n.peer_id == id.to_string()),
            "the server lists the {label} node"
        );
        outsider.handle.shutdown().await;
    }

    // The keyed node dials outsiders itself (as it would dial a DHT provider): refused too, over
    // both transports.
    for (label, probe_key, reason) in [
        ("keyless", None, "no_key"),
        ("wrong key", Some(key(2)), "wrong_key"),
    ] {
        let outsider = Probe::new(probe_key).await?;
        let mut outsider = outsider;
        for addr in outsider.listen.clone() {
            k.node.handle.dial(addr.clone()).await?;
            // Keep the outsider's swarm running until the keyed node has refused it.
            let id = outsider.id;
            outsider
                .drive(refusal_of(&mut log, id, Some(reason), LIMIT))
                .await?
                .with_context(|| format!("{label} at {addr}"))?;
        }
        ensure!(
            !k.node
                .handle
                .peers()
                .await?
                .iter()
                .any(|p| p.peer_id == outsider.id.to_string()),
            "the node kept a connection to the {label} outsider"
        );
    }
    k.stop().await;
    Ok(())
}
