//! Shared by the download tests: small generated CIFAR-10 / STL-10 archives and a local HTTP
//! server that serves one of them, like a mirror would.
#![allow(dead_code)]

use md5::{Digest, Md5};
use moco_server::data::{cifar, stl10};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A tar.gz of `files` (name inside the archive, bytes).
pub fn tar_gz(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for (name, bytes) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, name, &bytes[..]).unwrap();
    }
    let tar = tar.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap()
}

/// A tar.gz holding `cifar-10-batches-bin/` with 2 records per training file and 2 test records.
pub fn cifar10_archive() -> Vec<u8> {
    let image = |seed: u8| -> Vec<u8> {
        (0..cifar::PIXELS)
            .map(|i| (i as u8).wrapping_mul(seed))
            .collect()
    };
    let mut files = Vec::new();
    for b in 1..=5u8 {
        files.push((
            format!("cifar-10-batches-bin/data_batch_{b}.bin"),
            cifar::encode_records(&[(b, image(b)), (b + 1, image(b + 1))], false),
        ));
    }
    files.push((
        "cifar-10-batches-bin/test_batch.bin".into(),
        cifar::encode_records(&[(0, image(9)), (9, image(7))], false),
    ));
    files.push((
        "cifar-10-batches-bin/batches.meta.txt".into(),
        b"airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n".to_vec(),
    ));
    tar_gz(&files)
}

/// A tar.gz holding `stl10_binary/` with 3 training and 2 test images; `labels_ok = false` gives
/// the training split one label too few.
pub fn stl10_archive(labels_ok: bool) -> Vec<u8> {
    let image = |seed: u8| -> Vec<u8> {
        (0..stl10::IMAGE_BYTES)
            .map(|i| (i as u8).wrapping_mul(seed))
            .collect()
    };
    let train: Vec<Vec<u8>> = (1..=3).map(image).collect();
    let test: Vec<Vec<u8>> = (4..=5).map(image).collect();
    let train_labels = if labels_ok {
        vec![1, 2, 10]
    } else {
        vec![1, 2]
    };
    tar_gz(&[
        (
            "stl10_binary/train_X.bin".into(),
            stl10::encode_images(&train),
        ),
        ("stl10_binary/train_y.bin".into(), train_labels),
        (
            "stl10_binary/test_X.bin".into(),
            stl10::encode_images(&test),
        ),
        ("stl10_binary/test_y.bin".into(), vec![3, 4]),
        (
            "stl10_binary/class_names.txt".into(),
            stl10::CLASSES.join("\n").into_bytes(),
        ),
    ])
}

pub fn md5_hex(bytes: &[u8]) -> String {
    hex::encode(Md5::digest(bytes))
}

/// A mirror on 127.0.0.1:0 serving one archive.
pub struct Mirror {
    /// http://127.0.0.1:PORT
    pub base: String,
    pub hits: Arc<AtomicUsize>,
}

impl Mirror {
    /// The archive's address (anything else answers 404).
    pub fn url(&self) -> String {
        format!("{}/cifar.tar.gz", self.base)
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// Serves `body` at /cifar.tar.gz (404 elsewhere); counts requests.
pub fn serve(body: Vec<u8>) -> Mirror {
    serve_slowly(body, 1, Duration::ZERO)
}

/// As [`serve`], sending the body in `pieces` parts with `pause` between them (so a client sees
/// the transfer in progress).
pub fn serve_slowly(body: Vec<u8>, pieces: usize, pause: Duration) -> Mirror {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let body = Arc::new(body);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            counter.fetch_add(1, Ordering::SeqCst);
            let body = body.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    return;
                }
                loop {
                    let mut line = String::new();
                    match reader.read_line(&mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) if line == "\r\n" => break,
                        Ok(_) => {}
                    }
                }
                let found = request_line.starts_with("GET /cifar.tar.gz ");
                let (status, payload): (&str, &[u8]) = if found {
                    ("200 OK", &body)
                } else {
                    ("404 Not Found", b"no such file")
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: application/gzip\r\n\
                     Connection: close\r\n\r\n",
                    payload.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let piece = payload.len().div_ceil(pieces.max(1)).max(1);
                for (i, chunk) in payload.chunks(piece).enumerate() {
                    if i > 0 {
                        std::thread::sleep(pause);
                    }
                    if stream.write_all(chunk).is_err() {
                        return;
                    }
                    let _ = stream.flush();
                }
            });
        }
    });
    Mirror {
        base: format!("http://{addr}"),
        hits,
    }
}
