//! Hostile input into the inference frames (issue #9), the proptest twin of the
//! `pipeline_frame` fuzz target: random bytes, every truncation and bit flips of the committed
//! seed corpus (`fuzz/corpus/`), and hand-made huge counts and length prefixes. Each must end in
//! a clean error, never a panic, with allocation bounded by the bytes that actually arrived.

use peak_alloc::PeakAlloc;
use proptest::prelude::*;
use shardswarm_pipeline::frame::{Frame, FrameError, MAX_FRAME_LEN};
use shardswarm_pipeline::io::{StreamError, read_frame};
use tokio::io::AsyncWriteExt;

#[path = "../../../fuzz/support/seeds.rs"]
mod corpus;
use corpus::seeds;

#[global_allocator]
static PEAK: PeakAlloc = PeakAlloc;

/// Decodes `body`; whatever is accepted re-encodes and decodes again.
fn check(body: &[u8]) {
    if let Ok(f) = Frame::decode_body(body) {
        let bytes = f.to_bytes();
        Frame::decode_body(&bytes[4..]).expect("re-encoded frame decodes");
    }
}

#[test]
fn every_truncation_of_every_seed_is_a_clean_error() {
    let seeds = seeds("pipeline_frame");
    assert!(seeds.len() >= 5);
    for seed in &seeds {
        for cut in 0..seed.len() {
            check(&seed[..cut]);
        }
    }
    // The unprefixed seeds are whole frames; a cut one never decodes.
    for seed in seeds.iter().filter(|s| s[0] != 0) {
        Frame::decode_body(seed).expect("seed decodes");
        for cut in 0..seed.len() {
            assert!(
                Frame::decode_body(&seed[..cut]).is_err(),
                "cut at {cut} of {seed:?}"
            );
        }
    }
}

#[test]
fn huge_counts_are_refused_without_allocating_them() {
    let step = |input: u8, fields: &[u32], tail: &[u8]| {
        let mut b = vec![2u8];
        b.extend_from_slice(&[0; 12]);
        b.push(input);
        for f in fields {
            b.extend_from_slice(&f.to_be_bytes());
        }
        b.extend_from_slice(tail);
        b
    };
    let cases = [
        step(0, &[u32::MAX], &[0; 8]),
        step(0, &[1 << 30], &[0; 4]),
        step(1, &[u32::MAX, u32::MAX], &[0; 8]),
        step(1, &[1 << 16, 1 << 16], &[0; 16]),
        // An Open with 65535 hops (over MAX_HOPS) and one with a 65535-byte peer id, both short.
        [&[1u8][..], &[0; 20], &[0xff, 0xff], b"x"].concat(),
        [&[1u8][..], &[0; 20], &[0, 1], &[0xff, 0xff], b"peer"].concat(),
        // An Error whose strings claim more than is there.
        [&[4u8][..], &[1], &[0xff, 0xff], b"p"].concat(),
    ];
    for c in &cases {
        PEAK.reset_peak_usage();
        let before = PEAK.current_usage();
        assert!(Frame::decode_body(c).is_err(), "{c:?}");
        let grew = PEAK.peak_usage().saturating_sub(before);
        assert!(grew < 64 * 1024, "{grew} bytes for {c:?}");
    }
}

#[tokio::test]
async fn a_length_prefix_without_its_body_allocates_nothing_for_it() -> anyhow::Result<()> {
    // A peer announces the largest frame there is, sends 3 bytes of it and closes.
    let (mut a, mut b) = tokio::io::duplex(1024);
    a.write_all(&(MAX_FRAME_LEN as u32).to_be_bytes()).await?;
    a.write_all(&[2, 0, 0]).await?;
    drop(a);
    PEAK.reset_peak_usage();
    let before = PEAK.current_usage();
    let err = read_frame(&mut b).await.expect_err("truncated");
    let grew = PEAK.peak_usage().saturating_sub(before);
    assert!(
        matches!(&err, StreamError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof),
        "{err}"
    );
    assert!(
        grew < 1 << 20,
        "{grew} bytes held for a 128 MiB claim with 3 bytes sent"
    );
    // Over the cap: refused from the prefix alone.
    let (mut a, mut b) = tokio::io::duplex(64);
    a.write_all(&(MAX_FRAME_LEN as u32 + 1).to_be_bytes())
        .await?;
    let err = read_frame(&mut b).await.expect_err("too long");
    assert!(
        matches!(err, StreamError::Frame(FrameError::Length(_))),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn frames_split_across_many_small_writes_still_arrive() -> anyhow::Result<()> {
    let seeds = seeds("pipeline_frame");
    let (mut a, mut b) = tokio::io::duplex(7);
    let frames: Vec<Frame> = seeds
        .iter()
        .filter(|s| s[0] != 0)
        .map(|s| Frame::decode_body(s).expect("seed"))
        .collect();
    let sent = frames.clone();
    let writer = tokio::spawn(async move {
        for f in &sent {
            for chunk in f.to_bytes().chunks(3) {
                a.write_all(chunk).await?;
            }
        }
        Ok::<_, std::io::Error>(())
    });
    for f in &frames {
        assert_eq!(read_frame(&mut b).await?.as_ref(), Some(f));
    }
    writer.await??;
    assert_eq!(read_frame(&mut b).await?, None);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_are_clean_errors(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        check(&bytes);
    }

    #[test]
    fn bit_flips_of_seeds_are_handled(
        pick in any::<prop::sample::Index>(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..8), 1..6),
    ) {
        let all = seeds("pipeline_frame");
        let mut bytes = all[pick.index(all.len())].clone();
        for (at, bit) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= 1 << bit;
        }
        check(&bytes);
    }
}
