//! A large upload through `POST /v1/files` streams into Postgres in ~1 MiB chunks and streams
//! back byte-exact, without the server holding the file in memory. Alone in its test binary so
//! the process's peak memory is this test's own.

mod common;

use std::time::Duration;

use common::TestEnv;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use sluice::app::Roles;

const SIZE: usize = 50 * 1024 * 1024;
const PIECE: usize = 64 * 1024;

/// Deterministic, incompressible-enough bytes: piece `i` of the file.
fn piece(i: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(PIECE);
    let mut h = Sha256::digest(i.to_le_bytes()).to_vec();
    while out.len() < PIECE {
        out.extend_from_slice(&h);
        h = Sha256::digest(&h).to_vec();
    }
    out.truncate(PIECE);
    out
}

/// Peak resident memory of this process, in bytes.
fn peak_rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifty_megabyte_upload_is_stored_in_chunks_and_read_back_byte_exact_without_buffering() {
    let env = TestEnv::new().await;
    let running = env
        .start(Roles {
            api: true,
            ..Roles::default()
        })
        .await;
    let key = env.key("big").await;
    let base = format!("http://{}", running.api_addr.unwrap());
    let http = reqwest::Client::new();
    let before = peak_rss();

    let mut expected = Sha256::new();
    for i in 0..SIZE / PIECE {
        expected.update(piece(i));
    }
    let expected = expected.finalize();
    let body = futures::stream::iter(0..SIZE / PIECE).map(|i| Ok::<_, std::io::Error>(piece(i)));
    let part =
        reqwest::multipart::Part::stream_with_length(reqwest::Body::wrap_stream(body), SIZE as u64)
            .file_name("big.jsonl");
    let form = reqwest::multipart::Form::new()
        .text("purpose", "batch")
        .part("file", part);
    let resp = http
        .post(format!("{base}/v1/files"))
        .bearer_auth(&key)
        .multipart(form)
        .timeout(Duration::from_secs(180))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let file: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(file["bytes"], SIZE as u64, "{file}");
    assert_eq!(file["object"], "file");
    let id = file["id"].as_str().unwrap().to_string();
    let chunks = sluice::db::files::chunk_count(&env.pool, &id)
        .await
        .unwrap();
    assert_eq!(
        chunks as usize,
        SIZE.div_ceil(sluice::db::files::CHUNK_BYTES)
    );

    let resp = http
        .get(format!("{base}/v1/files/{id}/content"))
        .bearer_auth(&key)
        .timeout(Duration::from_secs(180))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let mut got = Sha256::new();
    let mut len = 0usize;
    let mut stream = resp.bytes_stream();
    while let Some(b) = stream.next().await {
        let b = b.unwrap();
        len += b.len();
        got.update(&b);
    }
    assert_eq!(len, SIZE);
    assert_eq!(
        got.finalize(),
        expected,
        "the content differs from the upload"
    );
    let grew = peak_rss().saturating_sub(before);
    eprintln!("peak RSS grew by {grew} bytes for a {SIZE}-byte upload and download");
    assert!(
        grew < SIZE / 2,
        "peak memory grew by {grew} bytes for a {SIZE}-byte upload and download: something buffers the file"
    );
    running.stop().await;
    env.cleanup().await;
}
