//! The GGUF tokenizer against llama.cpp's `llama-tokenize` on the default model
//! (fixture `smollm2-tokenizer-reference.json`: special-token parsing on, no BOS), plus
//! round trips and the chat template of the default model.

mod common;
use anyhow::{Context, Result};
use common::default_model;
use shardswarm_model::{ChatTemplate, GgufTokenizer};

#[derive(serde::Deserialize)]
struct Reference {
    cases: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
}

#[test]
fn default_model_tokenizer_matches_llama_cpp_reference() -> Result<()> {
    let tok = GgufTokenizer::from_file(&default_model()?)?;
    let reference: Reference =
        serde_json::from_str(include_str!("fixtures/smollm2-tokenizer-reference.json"))?;
    assert!(reference.cases.len() >= 30);
    let mut failures = Vec::new();
    for case in &reference.cases {
        let ids = tok.encode(&case.text)?;
        if ids != case.ids {
            failures.push(format!(
                "{:?}: got {ids:?}, llama.cpp {:?}",
                case.text, case.ids
            ));
        }
        let back = tok.decode(&ids)?;
        if back != case.text {
            failures.push(format!("round trip {:?} -> {back:?}", case.text));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

#[test]
fn default_model_flags_and_stop_tokens() -> Result<()> {
    let tok = GgufTokenizer::from_file(&default_model()?)?;
    assert!(!tok.add_bos());
    assert_eq!(tok.bos_id(), Some(1));
    assert_eq!(tok.eos_id(), Some(2));
    assert!(tok.stop_ids().contains(&2), "{:?}", tok.stop_ids());
    // Specials in raw text are parsed as one token each.
    assert_eq!(tok.encode("<|im_start|>user\nhi<|im_end|>")?[0], 1);
    Ok(())
}

#[test]
fn streaming_decode_holds_back_split_utf8() -> Result<()> {
    let tok = GgufTokenizer::from_file(&default_model()?)?;
    let text = "naïve 日本語 🦀 ok";
    let ids = tok.encode(text)?;
    let mut stream = tok.stream();
    let mut out = String::new();
    for id in ids {
        let piece = stream.push(id)?;
        assert!(
            !piece.contains('\u{FFFD}'),
            "partial character leaked: {piece:?}"
        );
        out.push_str(&piece);
    }
    out.push_str(&stream.finish()?);
    assert_eq!(out, text);
    Ok(())
}

#[test]
fn default_chat_template_renders_chatml_with_default_system_prompt() -> Result<()> {
    let tok = GgufTokenizer::from_file(&default_model()?)?;
    let src = tok.chat_template().context("template")?;
    let t = ChatTemplate::new(src, "<|im_start|>", "<|im_end|>")?;
    let out = t.render_user_prompt("What is 2+2?")?;
    assert_eq!(
        out,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    );
    Ok(())
}
