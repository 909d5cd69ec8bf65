//! The pipeline end to end over in-memory streams: stage servers on a tiny synthetic model's
//! shards, a client routing over them. Checks token-for-token equality with the whole model,
//! recovery from a killed stage, the no-holder error and that cancelled sessions are freed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use candle_core::quantized::GgmlDType;
use futures::future::BoxFuture;
use shardswarm_model::synth::{SynthSpec, write_synth_model};
use shardswarm_model::{Device, GenerateOptions, Generator, SamplerConfig, Stage};
use shardswarm_pipeline::{
    BoxStream, Client, ClientConfig, ClientError, Dialer, Finish, GenParams, RouteSource,
    RouteView, Sampling, StageLimits, StageServer, StageSource,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

struct Shards(HashMap<u32, Arc<Stage>>);

impl StageSource for Shards {
    fn stage(&self, shard: u32) -> Option<Arc<Stage>> {
        self.0.get(&shard).cloned()
    }
}

/// In-process "network": peer name → stage server; killing a peer aborts its session tasks
/// (their streams drop, as when a process dies) and refuses new dials.
#[derive(Default)]
struct Net {
    servers: Mutex<HashMap<String, Arc<StageServer>>>,
    tasks: Mutex<HashMap<String, Vec<JoinHandle<()>>>>,
    dead: Mutex<HashSet<String>>,
    holders: Mutex<BTreeMap<u32, Vec<String>>>,
    total: u32,
}

impl Net {
    fn kill(&self, peer: &str) {
        self.dead.lock().expect("lock").insert(peer.to_owned());
        for t in self
            .tasks
            .lock()
            .expect("lock")
            .remove(peer)
            .unwrap_or_default()
        {
            t.abort();
        }
    }

    fn sessions(&self) -> usize {
        let servers = self.servers.lock().expect("lock");
        servers.values().map(|s| s.usage().sessions).sum()
    }
}

struct NetDialer(Arc<Net>);

impl Dialer for NetDialer {
    fn open(&self, peer: &str) -> BoxFuture<'_, Result<BoxStream, String>> {
        let peer = peer.to_owned();
        Box::pin(async move {
            if self.0.dead.lock().expect("lock").contains(&peer) {
                return Err(format!("{peer} is unreachable"));
            }
            let server = self.0.servers.lock().expect("lock").get(&peer).cloned();
            let server = server.ok_or_else(|| format!("unknown peer {peer}"))?;
            let (a, b) = tokio::io::duplex(1 << 16);
            let task = tokio::spawn(async move { server.serve(Box::new(b)).await });
            self.0
                .tasks
                .lock()
                .expect("lock")
                .entry(peer)
                .or_default()
                .push(task);
            Ok(Box::new(a) as BoxStream)
        })
    }
}

impl RouteSource for Net {
    fn view(&self) -> BoxFuture<'_, RouteView> {
        let dead = self.dead.lock().expect("lock").clone();
        let holders = self
            .holders
            .lock()
            .expect("lock")
            .iter()
            .map(|(s, ps)| {
                (
                    *s,
                    ps.iter().filter(|p| !dead.contains(*p)).cloned().collect(),
                )
            })
            .collect();
        Box::pin(async move {
            RouteView {
                total_shards: self.total,
                holders,
            }
        })
    }

    fn latency(&self, _peer: &str) -> Option<Duration> {
        None
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    whole: Generator,
    net: Arc<Net>,
    client: Client,
}

/// A 4-layer synthetic model split into 4 shards; `peers` says who loads which shards.
fn fixture(peers: &[(&str, &[u32])]) -> Result<Fixture> {
    let dir = tempfile::tempdir()?;
    let model = dir.path().join("m.gguf");
    let mut spec = SynthSpec::tiny(GgmlDType::Q8_0, 7);
    spec.layers = 4;
    write_synth_model(&model, &spec)?;
    let shards_dir = dir.path().join("shards");
    shardswarm_model::split::split(&model, 4, &shards_dir, |_| {})?;
    let whole = Generator::load_model(&model, &Device::Cpu)?;
    let net = Arc::new(Net {
        total: 4,
        ..Net::default()
    });
    let dialer: Arc<dyn Dialer> = Arc::new(NetDialer(net.clone()));
    for (peer, shards) in peers {
        let mut stages = HashMap::new();
        for &s in *shards {
            let stage = Stage::load(&shard(&shards_dir, s), &Device::Cpu)?;
            stages.insert(s, Arc::new(stage));
            net.holders
                .lock()
                .expect("lock")
                .entry(s)
                .or_default()
                .push((*peer).to_owned());
        }
        let server = StageServer::new(
            (*peer).to_owned(),
            Arc::new(Shards(stages)),
            dialer.clone(),
            StageLimits::default(),
        );
        net.servers
            .lock()
            .expect("lock")
            .insert((*peer).to_owned(), Arc::new(server));
    }
    let client = Client::new(dialer, net.clone(), ClientConfig::default());
    Ok(Fixture {
        _dir: dir,
        whole,
        net,
        client,
    })
}

fn shard(dir: &Path, i: u32) -> std::path::PathBuf {
    dir.join(format!("shard-{i}.gguf"))
}

fn params(prompt: Vec<u32>, max_tokens: usize, sampling: Sampling, seed: u64) -> GenParams {
    GenParams {
        prompt,
        max_tokens,
        sampling,
        seed,
        stop_ids: Vec::new(),
        context: 512,
    }
}

fn reference(f: &Fixture, prompt: &[u32], n: usize, sampler: SamplerConfig) -> Result<Vec<u32>> {
    let opts = GenerateOptions {
        max_tokens: n,
        sampler,
        ignore_eos: true,
    };
    Ok(f.whole.generate_ids(prompt, &opts, |_| true)?.tokens)
}

/// Runs a generation, collecting tokens; `on_token(count)` may act mid-stream.
async fn run(
    f: &Fixture,
    p: &GenParams,
    mut on_token: impl FnMut(usize) -> bool,
) -> Result<(Vec<u32>, Result<shardswarm_pipeline::Outcome, ClientError>)> {
    let (tx, mut rx) = mpsc::channel(4);
    let gen_fut = f.client.generate(p, tx);
    // `move`: the receiver is dropped as soon as collecting stops, which cancels.
    let collect = async move {
        let mut got = Vec::new();
        while let Some(t) = rx.recv().await {
            got.push(t);
            if !on_token(got.len()) {
                break;
            }
        }
        got
    };
    let (outcome, got) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(gen_fut, collect)
    })
    .await
    .context("generation timed out")?;
    Ok((got, outcome))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greedy_pipeline_equals_the_whole_model() -> Result<()> {
    let f = fixture(&[("a", &[0, 1]), ("b", &[2]), ("c", &[3])])?;
    for prompt in [vec![1u32, 50, 60, 70], vec![5u32; 17], vec![300u32]] {
        let want = reference(&f, &prompt, 24, SamplerConfig::greedy())?;
        let p = params(prompt, 24, Sampling::greedy(), 0);
        let (got, outcome) = run(&f, &p, |_| true).await?;
        let outcome = outcome?;
        assert_eq!(got, want);
        assert_eq!(outcome.finish, Finish::Length);
        assert_eq!(outcome.route.len(), 3, "a runs shards 0..2 in one hop");
        assert_eq!(
            outcome.step_times.len(),
            got.len(),
            "one timed step per token, the prompt's step first"
        );
    }
    wait_freed(&f.net).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_sampling_equals_generate_with_the_same_seed() -> Result<()> {
    let f = fixture(&[("a", &[0, 1, 2, 3])])?;
    let sampler = SamplerConfig {
        temperature: 0.9,
        top_k: 0,
        top_p: 0.95,
        repeat_penalty: 1.0,
        repeat_last_n: 64,
        seed: 1234,
    };
    let prompt = vec![1u32, 2, 3];
    let want = reference(&f, &prompt, 20, sampler)?;
    let sampling = Sampling {
        temperature: 0.9,
        top_k: 0,
        top_p: 0.95,
    };
    let (got, _) = run(&f, &params(prompt, 20, sampling, 1234), |_| true).await?;
    assert_eq!(got, want);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_stage_is_replaced_by_its_replica_without_changing_the_output() -> Result<()> {
    let f = fixture(&[("a", &[0, 1]), ("b", &[2]), ("b2", &[2]), ("c", &[3])])?;
    let prompt = vec![7u32, 8, 9, 10, 11];
    let want = reference(&f, &prompt, 30, SamplerConfig::greedy())?;
    let p = params(prompt, 30, Sampling::greedy(), 0);
    // Learn which replica the planner uses, then kill it after 6 tokens of the next run.
    let (_, first) = run(&f, &p, |n| n < 2).await?;
    let victim = first?.route[1].peer.clone();
    let net = f.net.clone();
    let v = victim.clone();
    let (got, outcome) = run(&f, &p, move |n| {
        if n == 6 {
            net.kill(&v);
        }
        true
    })
    .await?;
    let outcome = outcome?;
    assert_eq!(got, want, "the answer continues unchanged");
    assert_eq!(outcome.recoveries, 1);
    assert!(outcome.route.iter().all(|h| h.peer != victim));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_any_holder_the_error_names_the_missing_shard() -> Result<()> {
    let f = fixture(&[("a", &[0, 1]), ("b", &[2]), ("c", &[3])])?;
    let p = params(vec![1, 2, 3], 30, Sampling::greedy(), 0);
    let net = f.net.clone();
    let (got, outcome) = run(&f, &p, move |n| {
        if n == 3 {
            net.kill("b");
        }
        true
    })
    .await?;
    // The kill lands after the third token reached the collector; the client may already have
    // produced a few more into the channel (capacity 4) by then, but never all 30.
    assert!((3..30).contains(&got.len()), "{} tokens", got.len());
    let err = outcome.expect_err("no holder of shard 2 is left");
    assert!(err.to_string().contains("shards [2]"), "{err}");
    // And a fresh request is refused up front with the same message.
    let (_, outcome) = run(&f, &p, |_| true).await?;
    match outcome {
        Err(ClientError::NoRoute(e)) => assert_eq!(e.missing, vec![2]),
        other => panic!("expected NoRoute, got {other:?}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_receiver_cancels_and_frees_every_stage() -> Result<()> {
    let f = fixture(&[("a", &[0]), ("b", &[1, 2]), ("c", &[3])])?;
    let p = params(vec![1, 2, 3], 200, Sampling::greedy(), 0);
    let (got, outcome) = run(&f, &p, |n| n < 3).await?;
    assert_eq!(got.len(), 3);
    assert_eq!(outcome?.finish, Finish::Cancelled);
    wait_freed(&f.net).await
}

/// The stages notice closed streams in their own tasks: waits for every session to be freed
/// (bounded; the usage counters have no event to await).
async fn wait_freed(net: &Net) -> Result<()> {
    tokio::time::timeout(Duration::from_secs(10), async {
        while net.sessions() != 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .context("sessions were not freed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_generations_share_replicas_and_all_match() -> Result<()> {
    let f = Arc::new(fixture(&[
        ("a", &[0, 1]),
        ("a2", &[0, 1]),
        ("b", &[2, 3]),
        ("b2", &[2, 3]),
    ])?);
    let prompt = vec![3u32, 1, 4, 1, 5];
    let want = reference(&f, &prompt, 16, SamplerConfig::greedy())?;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let f = f.clone();
        let prompt = prompt.clone();
        tasks.push(tokio::spawn(async move {
            let p = params(prompt, 16, Sampling::greedy(), 0);
            let (got, outcome) = run(&f, &p, |_| true).await?;
            Ok::<_, anyhow::Error>((got, outcome?.route))
        }));
    }
    let mut first_hops = HashSet::new();
    for t in tasks {
        let (got, route) = t.await??;
        assert_eq!(got, want);
        first_hops.insert(route[0].peer.clone());
    }
    assert_eq!(first_hops.len(), 2, "both replicas of shards 0..2 served");
    Ok(())
}
