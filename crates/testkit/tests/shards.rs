//! `write_random_shards` writes real llama shards: each loads as a stage, they chain into a
//! generator, and the bytes depend on the seed only.

use anyhow::Result;
use shardswarm_model::{Device, Generator, Stage};
use shardswarm_testkit::write_random_shards;

#[test]
fn random_shards_load_as_stages_and_chain_into_finite_logits() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let size = 40_000;
    let manifest = write_random_shards(tmp.path(), 3, size, 7)?;
    assert_eq!(manifest.block_count, 3);
    assert_eq!(manifest.shards.len(), 3);
    for (i, s) in manifest.shards.iter().enumerate() {
        let path = tmp.path().join(&s.filename);
        let len = std::fs::metadata(&path)?.len();
        assert_eq!(len, s.size, "{}", s.filename);
        let want = (size + i * 977) as u64;
        assert!(
            len.abs_diff(want) < 64,
            "{} is {len} bytes, want ~{want}",
            s.filename
        );
        let stage = Stage::load(&path, &Device::Cpu)?;
        assert_eq!(s.layers, [i as u32, i as u32 + 1]);
        assert_eq!(stage.layers(), s.layers[0]..s.layers[1]);
        assert_eq!(stage.shard_index(), Some(s.index));
        assert_eq!(stage.has_embedding(), i == 0);
        assert_eq!(stage.has_head(), i == 2);
    }
    let generator = Generator::load_shards_dir(tmp.path(), &Device::Cpu)?;
    let tokens = generator.tokenizer().encode("the cat")?;
    assert!(!tokens.is_empty());
    let logits = generator.logits(&tokens)?;
    assert_eq!(logits.len(), generator.stages()[0].config().vocab_size);
    assert!(logits.iter().all(|x| x.is_finite()), "{logits:?}");
    Ok(())
}

#[test]
fn random_shards_are_deterministic_and_differ_across_seeds() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let a = write_random_shards(&tmp.path().join("a"), 2, 5_000, 1)?;
    let again = write_random_shards(&tmp.path().join("again"), 2, 5_000, 1)?;
    let b = write_random_shards(&tmp.path().join("b"), 2, 5_000, 2)?;
    assert_eq!(a, again);
    for s in &a.shards {
        assert_eq!(
            std::fs::read(tmp.path().join("a").join(&s.filename))?,
            std::fs::read(tmp.path().join("again").join(&s.filename))?
        );
    }
    for (x, y) in a.shards.iter().zip(&b.shards) {
        assert_ne!(x.info_hash, y.info_hash, "{}", x.filename);
    }
    assert_ne!(a.model_id, b.model_id);
    Ok(())
}

#[test]
fn a_size_below_the_model_still_gives_a_loadable_shard() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let manifest = write_random_shards(tmp.path(), 1, 1_000, 6)?;
    let path = tmp.path().join(&manifest.shards[0].filename);
    let stage = Stage::load(&path, &Device::Cpu)?;
    assert!(stage.has_embedding() && stage.has_head());
    Ok(())
}
